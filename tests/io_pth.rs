//! PyTorch `.pth` checkpoints: the fixtures load and equal their f32 twins rounded to bf16;
//! hand-built pickles and zips exercise the restricted unpickler's refusals; mutated fixture
//! bytes never make the reader panic.

use proptest::prelude::*;
use wanrt::io::{open, pth, FileFormat};
use wanrt::{DType, Error};

mod common;
use common::model;

// ---------------------------------------------------------------------------------------------
// The fixtures

fn assert_equals_rounded_twin(pth_file: &str, f32_file: &str) {
    let pth = open(model(pth_file)).unwrap();
    let f32 = open(model(f32_file)).unwrap();
    assert_eq!(pth.format, FileFormat::Pth);
    assert!(pth.metadata.is_empty());
    let names: Vec<_> = pth.tensors.keys().collect();
    assert_eq!(names, f32.tensors.keys().collect::<Vec<_>>());
    for (name, t) in &pth.tensors {
        let want = f32.tensors[name].to_dtype(DType::BF16).unwrap();
        assert_eq!(t.dtype(), DType::BF16, "{name}");
        assert_eq!(t.dims(), want.dims(), "{name}");
        assert!(t.is_mapped(), "{name} should borrow the file");
        assert_eq!(t.raw_bytes().unwrap(), want.raw_bytes().unwrap(), "{name}");
    }
}

#[test]
fn vae_pth_equals_f32_twin_in_bf16() {
    assert_equals_rounded_twin("tiny-vae/vae_bf16.pth", "tiny-vae/vae_f32.safetensors");
}

#[test]
fn umt5_pth_equals_f32_twin_in_bf16() {
    assert_equals_rounded_twin(
        "tiny-umt5/umt5_enc_bf16.pth",
        "tiny-umt5/umt5_enc_f32.safetensors",
    );
}

// ---------------------------------------------------------------------------------------------
// A tiny pickle emitter (the opcodes torch.save writes) and a stored-zip writer

#[derive(Default, Clone)]
struct P(Vec<u8>);

impl P {
    fn new() -> P {
        P(vec![0x80, 2])
    }
    fn op(mut self, op: u8) -> P {
        self.0.push(op);
        self
    }
    fn raw(mut self, bytes: &[u8]) -> P {
        self.0.extend_from_slice(bytes);
        self
    }
    fn mark(self) -> P {
        self.op(b'(')
    }
    fn str(self, s: &str) -> P {
        self.op(b'X')
            .raw(&(s.len() as u32).to_le_bytes())
            .raw(s.as_bytes())
    }
    /// BININT for what fits, LONG1 (as torch writes big sizes) beyond.
    fn int(self, v: u32) -> P {
        match i32::try_from(v) {
            Ok(v) => self.op(b'J').raw(&v.to_le_bytes()),
            Err(_) => self
                .op(0x8a)
                .raw(&[5])
                .raw(&u64::from(v).to_le_bytes()[..5]),
        }
    }
    fn global(self, module: &str, name: &str) -> P {
        self.op(b'c').raw(format!("{module}\n{name}\n").as_bytes())
    }
    fn stack_global(self, module: &str, name: &str) -> P {
        self.str(module).str(name).op(0x93)
    }
    fn tuple_of(self, items: &[u32]) -> P {
        items.iter().fold(self.mark(), |p, &v| p.int(v)).op(b't')
    }
    fn put(self, i: u8) -> P {
        self.op(b'q').raw(&[i])
    }
    fn get(self, i: u8) -> P {
        self.op(b'h').raw(&[i])
    }
    /// `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())`
    /// exactly as torch.save writes it.
    fn tensor(
        self,
        class: &str,
        key: &str,
        numel: u32,
        offset: u32,
        size: &[u32],
        stride: &[u32],
    ) -> P {
        self.global("torch._utils", "_rebuild_tensor_v2")
            .mark()
            .mark()
            .str("storage")
            .global("torch", class)
            .str(key)
            .str("cpu")
            .int(numel)
            .op(b't')
            .op(b'Q')
            .int(offset)
            .tuple_of(size)
            .tuple_of(stride)
            .op(0x89)
            .global("collections", "OrderedDict")
            .op(b')')
            .op(b'R')
            .op(b't')
            .op(b'R')
    }
    fn stop(self) -> Vec<u8> {
        self.op(b'.').0
    }
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A zip of `(name, bytes, method)` members; method 0 is stored, 8 claims deflate (the bytes
/// are left as they are: the reader must refuse before decompressing anything).
fn zip(members: &[(&str, &[u8], u16)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for &(name, data, method) in members {
        let offset = out.len() as u32;
        let crc = crc32(data);
        let common = |v: &mut Vec<u8>| {
            v.extend_from_slice(&20u16.to_le_bytes()); // version needed
            v.extend_from_slice(&0u16.to_le_bytes()); // flags
            v.extend_from_slice(&method.to_le_bytes());
            v.extend_from_slice(&0u32.to_le_bytes()); // time, date
            v.extend_from_slice(&crc.to_le_bytes());
            v.extend_from_slice(&(data.len() as u32).to_le_bytes());
            v.extend_from_slice(&(data.len() as u32).to_le_bytes());
            v.extend_from_slice(&(name.len() as u16).to_le_bytes());
            v.extend_from_slice(&0u16.to_le_bytes()); // extra length
        };
        out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        common(&mut out);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);
        central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        central.extend_from_slice(&20u16.to_le_bytes()); // version made by
        common(&mut central);
        central.extend_from_slice(&[0; 6]); // comment length, disk, internal attributes
        central.extend_from_slice(&0u32.to_le_bytes()); // external attributes
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
    }
    let cd_offset = out.len() as u32;
    out.extend_from_slice(&central);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0; 4]); // disk numbers
    out.extend_from_slice(&(members.len() as u16).to_le_bytes());
    out.extend_from_slice(&(members.len() as u16).to_le_bytes());
    out.extend_from_slice(&(central.len() as u32).to_le_bytes());
    out.extend_from_slice(&cd_offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes()); // comment length
    out
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A checkpoint folder `archive/` with `data.pkl`, `byteorder` and the given storages.
fn checkpoint(pickle: &[u8], storages: &[(&str, &[u8])]) -> Vec<u8> {
    let names: Vec<String> = storages
        .iter()
        .map(|(k, _)| format!("archive/data/{k}"))
        .collect();
    let mut members = vec![
        ("archive/data.pkl", pickle, 0),
        ("archive/byteorder", &b"little"[..], 0),
    ];
    members.extend(
        storages
            .iter()
            .zip(&names)
            .map(|((_, d), n)| (n.as_str(), *d, 0)),
    );
    zip(&members)
}

/// Writes `bytes` to a temporary file and reads it as a `.pth`.
fn read(bytes: &[u8]) -> wanrt::Result<wanrt::io::Checkpoint> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.pth");
    std::fs::write(&path, bytes).unwrap();
    pth::read_file(&path)
}

/// The `what` of a [`Error::BadFile`], or a panic naming what came instead.
fn bad_file(r: wanrt::Result<wanrt::io::Checkpoint>) -> String {
    match r {
        Err(Error::BadFile { what, .. }) => what,
        Err(e) => panic!("expected BadFile, got {e:?}"),
        Ok(c) => panic!("expected BadFile, got {} tensors", c.tensors.len()),
    }
}

fn forbidden(r: wanrt::Result<wanrt::io::Checkpoint>) -> String {
    match r {
        Err(e @ Error::ForbiddenGlobal { .. }) => {
            let msg = e.to_string();
            let Error::ForbiddenGlobal { global, .. } = e else {
                unreachable!()
            };
            assert!(msg.contains(&global), "{msg}");
            global
        }
        Err(e) => panic!("expected ForbiddenGlobal, got {e:?}"),
        Ok(_) => panic!("expected ForbiddenGlobal, got a checkpoint"),
    }
}

/// `{"w": tensor}` over a 6-element f32 storage `0`.
fn one_tensor(size: &[u32], stride: &[u32], offset: u32) -> Vec<u8> {
    P::new()
        .op(b'}')
        .str("w")
        .tensor("FloatStorage", "0", 6, offset, size, stride)
        .op(b's')
        .stop()
}

const SIX: [f32; 6] = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0];

// ---------------------------------------------------------------------------------------------
// What a state dict may hold

#[test]
fn contiguous_views_are_mapped_and_strided_views_copied() {
    let data = f32_bytes(&SIX);
    let c = read(&checkpoint(
        &one_tensor(&[2, 3], &[3, 1], 0),
        &[("0", &data)],
    ))
    .unwrap();
    let t = &c.tensors["w"];
    assert!(t.is_mapped());
    assert_eq!(
        (t.dims(), t.to_f32_vec().unwrap()),
        (&[2, 3][..], SIX.to_vec())
    );

    let c = read(&checkpoint(&one_tensor(&[2], &[1], 3), &[("0", &data)])).unwrap();
    assert_eq!(c.tensors["w"].to_f32_vec().unwrap(), [3.0, 4.0]);

    // The transpose of a 2×3 matrix: stride (1, 3).
    let c = read(&checkpoint(
        &one_tensor(&[3, 2], &[1, 3], 0),
        &[("0", &data)],
    ))
    .unwrap();
    let t = &c.tensors["w"];
    assert!(!t.is_mapped());
    assert_eq!(
        (t.dims(), t.to_f32_vec().unwrap()),
        (&[3, 2][..], vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0])
    );

    // Every other element from offset 1, with a size-1 dim whose stride is meaningless.
    let c = read(&checkpoint(
        &one_tensor(&[1, 2], &[1000, 2], 1),
        &[("0", &data)],
    ))
    .unwrap();
    assert_eq!(c.tensors["w"].to_f32_vec().unwrap(), [1.0, 3.0]);

    // Empty and scalar tensors.
    let c = read(&checkpoint(
        &one_tensor(&[0, 4], &[4, 1], 0),
        &[("0", &data)],
    ))
    .unwrap();
    assert_eq!(c.tensors["w"].dims(), [0, 4]);
    let c = read(&checkpoint(&one_tensor(&[], &[], 5), &[("0", &data)])).unwrap();
    assert_eq!(c.tensors["w"].to_f32_vec().unwrap(), [5.0]);
}

/// `{"state_dict": OrderedDict(a=Parameter(t), b=t) with _metadata, "epoch": 3, "note": "x",
/// "lr": 1e-4}` over storages `0` (f32 × 6) and `1` (bf16 × 2).
fn nested_pickle() -> Vec<u8> {
    P::new()
        .op(b'}')
        .put(0)
        .mark()
        .str("state_dict")
        .global("collections", "OrderedDict")
        .op(b')')
        .op(b'R')
        .put(1)
        .mark()
        .str("a")
        .global("torch._utils", "_rebuild_parameter")
        .mark()
        .tensor("FloatStorage", "0", 6, 0, &[3], &[1])
        .op(0x88)
        .global("collections", "OrderedDict")
        .op(b')')
        .op(b'R')
        .op(b't')
        .op(b'R')
        .str("b")
        .tensor("BFloat16Storage", "1", 2, 1, &[1], &[1])
        .op(b'u')
        // BUILD with the module's `_metadata` attribute.
        .op(b'}')
        .str("_metadata")
        .op(b'}')
        .str("")
        .op(b'}')
        .str("version")
        .int(1)
        .op(b's')
        .op(b's')
        .op(b's')
        .op(b'b')
        .str("epoch")
        .int(3)
        .str("note")
        .str("x")
        .str("lr")
        .op(b'G')
        .raw(&1e-4f64.to_be_bytes())
        .op(b'u')
        .stop()
}

fn bf16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
        .collect()
}

#[test]
fn nested_dicts_parameters_and_ordered_dicts() {
    let bf16 = bf16_bytes(&[1.5, -2.0]);
    let c = read(&checkpoint(
        &nested_pickle(),
        &[("0", &f32_bytes(&SIX)), ("1", &bf16)],
    ))
    .unwrap();
    assert_eq!(
        c.tensors.keys().collect::<Vec<_>>(),
        ["state_dict.a", "state_dict.b"]
    );
    assert_eq!(
        c.tensors["state_dict.a"].to_f32_vec().unwrap(),
        [0.0, 1.0, 2.0]
    );
    assert_eq!(c.tensors["state_dict.b"].dtype(), DType::BF16);
    assert_eq!(c.tensors["state_dict.b"].to_f32_vec().unwrap(), [-2.0]);
}

#[test]
fn memoised_storage_shared_by_two_tensors() {
    // The second tensor fetches the persistent id tuple from the memo, as torch.save does.
    let pickle = P::new()
        .op(b'}')
        .mark()
        .str("x")
        .global("torch._utils", "_rebuild_tensor_v2")
        .put(0)
        .mark()
        .mark()
        .str("storage")
        .global("torch", "FloatStorage")
        .str("0")
        .str("cpu")
        .int(6)
        .op(b't')
        .put(1)
        .op(b'Q')
        .int(0)
        .tuple_of(&[2])
        .tuple_of(&[1])
        .op(0x89)
        .op(b'N')
        .op(b't')
        .op(b'R')
        .str("y")
        .get(0)
        .mark()
        .get(1)
        .op(b'Q')
        .int(4)
        .tuple_of(&[2])
        .tuple_of(&[1])
        .op(0x89)
        .op(b'N')
        .op(b't')
        .op(b'R')
        .op(b'u')
        .stop();
    let c = read(&checkpoint(&pickle, &[("0", &f32_bytes(&SIX))])).unwrap();
    assert_eq!(c.tensors["x"].to_f32_vec().unwrap(), [0.0, 1.0]);
    assert_eq!(c.tensors["y"].to_f32_vec().unwrap(), [4.0, 5.0]);
}

// ---------------------------------------------------------------------------------------------
// Refusals

#[test]
fn forbidden_globals_are_named() {
    let data = f32_bytes(&SIX);
    for (module, name) in [
        ("os", "system"),
        ("posix", "system"),
        ("__builtin__", "exec"),
        ("torch", "load"),
    ] {
        let pickle = P::new()
            .op(b'}')
            .str("w")
            .global(module, name)
            .str("echo hi")
            .op(0x85)
            .op(b'R')
            .op(b's')
            .stop();
        assert_eq!(
            forbidden(read(&checkpoint(&pickle, &[]))),
            format!("{module}.{name}")
        );
        // Named after valid tensors, it is still refused the moment it appears.
        let pickle = P::new()
            .op(b'}')
            .str("w")
            .tensor("FloatStorage", "0", 6, 0, &[6], &[1])
            .op(b's')
            .str("evil")
            .global(module, name)
            .op(b's')
            .stop();
        assert_eq!(
            forbidden(read(&checkpoint(&pickle, &[("0", &data)]))),
            format!("{module}.{name}")
        );
    }
    let pickle = P::new()
        .op(b'}')
        .str("w")
        .stack_global("builtins", "eval")
        .str("1+1")
        .op(0x85)
        .op(b'R')
        .op(b's')
        .stop();
    assert_eq!(forbidden(read(&checkpoint(&pickle, &[]))), "builtins.eval");
    // Lookalikes of allowed names are not allowed.
    let pickle = P::new()
        .global("torch._utils", "_rebuild_tensor_v2 ")
        .stop();
    assert_eq!(
        forbidden(read(&checkpoint(&pickle, &[]))),
        "torch._utils._rebuild_tensor_v2 "
    );
    let pickle = P::new().global("torch", "storage").stop();
    assert_eq!(forbidden(read(&checkpoint(&pickle, &[]))), "torch.storage");
}

#[test]
fn reduce_applies_only_allowed_callables() {
    // An allowed global that is not a rebuild function.
    let pickle = P::new()
        .op(b'}')
        .str("w")
        .global("torch", "FloatStorage")
        .int(4)
        .op(0x85)
        .op(b'R')
        .op(b's')
        .stop();
    let what = bad_file(read(&checkpoint(&pickle, &[])));
    assert!(
        what.contains("REDUCE applies `torch.FloatStorage`"),
        "{what}"
    );
    let pickle = P::new()
        .global("torch", "bfloat16")
        .op(b')')
        .op(b'R')
        .stop();
    assert!(bad_file(read(&checkpoint(&pickle, &[]))).contains("torch.bfloat16"));
    // A string is not callable.
    let pickle = P::new().str("os.system").str("ls").op(0x85).op(b'R').stop();
    let what = bad_file(read(&checkpoint(&pickle, &[])));
    assert!(what.contains("REDUCE applies a str"), "{what}");
    // Right callable, wrong arguments.
    let pickle = P::new()
        .global("collections", "OrderedDict")
        .str("x")
        .op(0x85)
        .op(b'R')
        .stop();
    let what = bad_file(read(&checkpoint(&pickle, &[])));
    assert!(
        what.contains("`collections.OrderedDict` called with 1 arguments"),
        "{what}"
    );
    let pickle = P::new()
        .global("torch._utils", "_rebuild_parameter")
        .str("x")
        .op(0x89)
        .op(b'N')
        .op(0x87)
        .op(b'R')
        .stop();
    assert!(bad_file(read(&checkpoint(&pickle, &[]))).contains("not a tensor"));
}

#[test]
fn storage_members_are_checked() {
    let data = f32_bytes(&SIX);
    let what = bad_file(read(&checkpoint(
        &one_tensor(&[6], &[1], 0),
        &[("1", &data)],
    )));
    assert!(
        what.contains("`archive/data/0` is missing") && what.contains("tensor `w`"),
        "{what}"
    );

    // The persistent id claims more elements than the member holds.
    let pickle = P::new()
        .op(b'}')
        .str("w")
        .tensor("FloatStorage", "0", 100, 0, &[100], &[1])
        .op(b's')
        .stop();
    let what = bad_file(read(&checkpoint(&pickle, &[("0", &data)])));
    assert!(
        what.contains("declares 100 elements of f32") && what.contains("holds 24 bytes"),
        "{what}"
    );
    let pickle = P::new()
        .op(b'}')
        .str("w")
        .tensor("DoubleStorage", "0", u32::MAX, 0, &[1], &[1])
        .op(b's')
        .stop();
    assert!(bad_file(read(&checkpoint(&pickle, &[("0", &data)]))).contains("declares"));

    // Views that reach past the storage.
    for (size, stride, offset) in [
        (&[7u32][..], &[1u32][..], 0),
        (&[2], &[1], 5),
        (&[2, 3], &[1, 3], 0),
        (&[1], &[1], 6),
    ] {
        let what = bad_file(read(&checkpoint(
            &one_tensor(size, stride, offset),
            &[("0", &data)],
        )));
        assert!(
            what.contains("reach past the 6 elements of storage `0`"),
            "{what}"
        );
    }
    // Indices whose arithmetic overflows.
    let what = bad_file(read(&checkpoint(
        &one_tensor(&[3, 2], &[u32::MAX, u32::MAX], 0),
        &[("0", &data)],
    )));
    assert!(what.contains("reach past"), "{what}");
    // Ranks differ.
    let what = bad_file(read(&checkpoint(
        &one_tensor(&[6], &[1, 1], 0),
        &[("0", &data)],
    )));
    assert!(what.contains("differ in rank"), "{what}");
}

#[test]
fn broadcast_views_cannot_blow_up_memory() {
    // Stride 0 repeats one element: a copy bigger than the whole file is refused.
    let data = f32_bytes(&SIX);
    let what = bad_file(read(&checkpoint(
        &one_tensor(&[1_000_000, 1000], &[0, 0], 0),
        &[("0", &data)],
    )));
    assert!(what.contains("more than the file justifies"), "{what}");
}

#[test]
fn compressed_members_are_refused_by_name() {
    let pickle = one_tensor(&[6], &[1], 0);
    let data = f32_bytes(&SIX);
    let file = zip(&[
        ("archive/data.pkl", &pickle, 0),
        ("archive/data/0", &data, 8),
    ]);
    let what = bad_file(read(&file));
    assert!(
        what.contains("`archive/data/0` is compressed (Deflated)"),
        "{what}"
    );
    let file = zip(&[
        ("archive/data.pkl", &pickle, 8),
        ("archive/data/0", &data, 0),
    ]);
    let what = bad_file(read(&file));
    assert!(
        what.contains("`archive/data.pkl`") && what.contains("compressed"),
        "{what}"
    );
}

#[test]
fn archive_layout_is_checked() {
    let pickle = one_tensor(&[6], &[1], 0);
    let data = f32_bytes(&SIX);
    let what = bad_file(read(&zip(&[("data.pkl", &pickle, 0)])));
    assert!(what.contains("not inside a folder"), "{what}");
    let what = bad_file(read(&zip(&[("archive/version", b"3\n", 0)])));
    assert!(what.contains("`archive/data.pkl` is missing"), "{what}");
    assert!(bad_file(read(&zip(&[]))).contains("zip"));
    assert!(bad_file(read(b"PK\x03\x04 but not really a zip")).contains("zip"));
    let file = zip(&[
        ("archive/data.pkl", &pickle, 0),
        ("archive/byteorder", b"big", 0),
        ("archive/data/0", &data, 0),
    ]);
    let what = bad_file(read(&file));
    assert!(what.contains("byteorder is `big`"), "{what}");
    // Without a byteorder record (older torch) little-endian is assumed.
    let file = zip(&[
        ("archive/data.pkl", &pickle, 0),
        ("archive/data/0", &data, 0),
    ]);
    assert_eq!(read(&file).unwrap().tensors["w"].to_f32_vec().unwrap(), SIX);
}

#[test]
fn truncated_pickles_are_errors() {
    let data = f32_bytes(&SIX);
    let pickle = one_tensor(&[2, 3], &[3, 1], 0);
    for n in 0..pickle.len() {
        let what = bad_file(read(&checkpoint(&pickle[..n], &[("0", &data)])));
        assert!(what.contains("`archive/data.pkl`"), "{n}: {what}");
    }
    let what = bad_file(read(&checkpoint(
        &pickle[..pickle.len() - 1],
        &[("0", &data)],
    )));
    assert!(what.contains("without a STOP"), "{what}");
}

#[test]
fn huge_declared_lengths_allocate_nothing() {
    for pickle in [
        P::new()
            .op(b'X')
            .raw(&u32::MAX.to_le_bytes())
            .raw(b"abc")
            .stop(),
        P::new()
            .op(0x8d)
            .raw(&u64::MAX.to_le_bytes())
            .raw(b"abc")
            .stop(),
        P::new().op(0x8b).raw(&u32::MAX.to_le_bytes()).stop(),
        P::new().op(0x95).raw(&[0xff; 4]).stop(),
    ] {
        let what = bad_file(read(&checkpoint(&pickle, &[])));
        assert!(what.contains("remain (truncated?)"), "{what}");
    }
    // Sizes that would overflow the element count.
    let pickle = P::new()
        .op(b'}')
        .str("w")
        .tensor(
            "FloatStorage",
            "0",
            6,
            0,
            &[u32::MAX, u32::MAX, u32::MAX],
            &[0, 0, 0],
        )
        .op(b's')
        .stop();
    let what = bad_file(read(&checkpoint(&pickle, &[("0", &f32_bytes(&SIX))])));
    assert!(
        what.contains("tensor `w`") && what.contains("too large"),
        "{what}"
    );
}

#[test]
fn deep_nesting_and_stack_limits() {
    // 100 000 nested dicts: flattening stops at a fixed depth instead of recursing on.
    let depth = 100_000;
    let mut p = P::new().op(b'}');
    for _ in 0..depth {
        p = p.str("k").op(b'}');
    }
    for _ in 0..depth {
        p = p.op(b's');
    }
    let what = bad_file(read(&checkpoint(&p.stop(), &[])));
    assert!(
        what.contains("nested more than 64 deep at `k.k.k"),
        "{what}"
    );

    // Deeply nested tuples need no recursion at all and hold no tensors.
    let mut p = P::new().op(b'}').str("t").op(b')');
    for _ in 0..depth {
        p = p.op(0x85);
    }
    assert!(read(&checkpoint(&p.op(b's').stop(), &[]))
        .unwrap()
        .tensors
        .is_empty());

    // The stack and the mark stack are capped.
    let p = P(vec![b'N'; 2 << 20]).stop();
    assert!(bad_file(read(&checkpoint(&p, &[]))).contains("stack grows past"));
    let p = P(vec![b'('; 2 << 20]).stop();
    assert!(bad_file(read(&checkpoint(&p, &[]))).contains("too many nested MARKs"));
}

#[test]
fn shared_dicts_cannot_expand_exponentially() {
    // d0 = {"w": t}; d(i+1) = {"a": d(i), "b": d(i)}: 2^40 names from a few hundred bytes.
    let mut p = P::new()
        .op(b'}')
        .put(0)
        .str("w")
        .tensor("FloatStorage", "0", 6, 0, &[6], &[1])
        .op(b's');
    for i in 1..=40u8 {
        p = p
            .op(b'}')
            .put(i)
            .str("a")
            .get(i - 1)
            .op(b's')
            .str("b")
            .get(i - 1)
            .op(b's');
    }
    let what = bad_file(read(&checkpoint(&p.stop(), &[("0", &f32_bytes(&SIX))])));
    assert!(
        what.contains("far more entries than the pickle holds"),
        "{what}"
    );
}

#[test]
fn malformed_structures_are_errors() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (P::new().op(b']').stop(), "holds a list, not a dict"),
        (P::new().op(b'N').stop(), "holds a None, not a dict"),
        (P::new().stop(), "pops an empty stack"),
        (
            P::new().op(b'}').mark().op(b's').stop(),
            "pops across a MARK",
        ),
        (
            P::new().op(b'}').get(7).stop(),
            "memo entry 7 was never stored",
        ),
        (P::new().op(b'}').op(b't').stop(), "no MARK"),
        (
            P::new().op(b']').str("k").str("v").op(b's').stop(),
            "sets items on a list",
        ),
        (
            P::new().op(b'}').mark().str("k").op(b'u').stop(),
            "odd number of items",
        ),
        (
            P::new().op(0x8a).raw(&[9]).raw(&[1; 9]).stop(),
            "does not fit 64 bits",
        ),
        (
            P::new().op(b'}').op(0xff).stop(),
            "unsupported pickle opcode 0xff",
        ),
        (
            P::new().op(b'}').op(b')').op(b'}').op(b's').stop(),
            "the top-level dict has a tuple key",
        ),
        (vec![0x80, 6, b'}', b'.'], "unsupported pickle protocol 6"),
        (P::new().int(1).op(b'Q').stop(), "persistent id is not"),
        (
            P::new().mark().str("storage").global("os", "getcwd").stop(),
            "os.getcwd",
        ),
        (
            P::new()
                .mark()
                .str("storage")
                .str("FloatStorage")
                .str("0")
                .str("cpu")
                .int(1)
                .op(b't')
                .op(b'Q')
                .stop(),
            "persistent id is not",
        ),
        (
            P::new()
                .str("x")
                .op(b'X')
                .raw(&[2, 0, 0, 0, 0xff, 0xfe])
                .stop(),
            "not UTF-8",
        ),
        (
            P::new().op(b'c').raw(b"os\nsystem").stop(),
            "no terminating newline",
        ),
        (P::new().int(1).op(b'N').op(b'b').stop(), "BUILD on a int"),
    ];
    for (pickle, want) in cases {
        let msg = match read(&checkpoint(&pickle, &[])) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("`{want}` case loaded"),
        };
        assert!(msg.contains(want), "want `{want}`, got: {msg}");
        assert!(msg.contains("model.pth"), "{msg}");
    }
}

// ---------------------------------------------------------------------------------------------
// Property tests: mutated files never panic

/// Where the bytes that matter sit in the UMT5 fixture: the pickle near the start and the
/// central directory at the end.
fn mutate(base: &[u8], edits: &[(u8, usize, u8)], cut: Option<usize>) -> Vec<u8> {
    let mut bytes = base.to_vec();
    let n = bytes.len();
    for &(region, pos, byte) in edits {
        let i = match region % 3 {
            0 => pos % 2500.min(n),
            1 => n - 1 - pos % 2500.min(n),
            _ => pos % n,
        };
        bytes[i] = byte;
    }
    if let Some(c) = cut {
        bytes.truncate(c % (n + 1));
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn mutated_fixture_never_panics(
        edits in proptest::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 0..8),
        cut in proptest::option::weighted(0.2, any::<usize>()),
    ) {
        let base = std::fs::read(model("tiny-umt5/umt5_enc_bf16.pth")).unwrap();
        let bytes = mutate(&base, &edits, cut);
        if let Ok(c) = read(&bytes) {
            for t in c.tensors.values() {
                prop_assert_eq!(t.raw_bytes().unwrap().len(), t.elem_count() * t.dtype().size_in_bytes());
            }
        }
    }

    #[test]
    fn mutated_pickles_never_panic(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<bool>()), 1..6),
    ) {
        // Overwrite or insert bytes in a valid pickle that uses every feature above.
        let mut pickle = nested_pickle();
        for (pos, byte, insert) in edits {
            let i = pos % (pickle.len() + 1);
            if insert || i == pickle.len() {
                pickle.insert(i, byte);
            } else {
                pickle[i] = byte;
            }
        }
        let storages = [("0", f32_bytes(&SIX)), ("1", bf16_bytes(&[1.5, -2.0]))];
        let storages: Vec<(&str, &[u8])> = storages.iter().map(|(k, d)| (*k, &d[..])).collect();
        if let Ok(c) = read(&checkpoint(&pickle, &storages)) {
            for t in c.tensors.values() {
                prop_assert!(t.to_f32_vec().is_ok());
            }
        }
    }
}
