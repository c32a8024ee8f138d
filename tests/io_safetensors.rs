//! safetensors IO: every fixture file loads zero-copy and round-trips through `write_file`, the
//! sharded fixture folder equals the single-file model, and bad files and folders give a
//! `BadFile` error naming the problem (never a panic), also under random mutation.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use proptest::prelude::*;
use wanrt::io::safetensors::{read_file, read_folder, write_file, write_file_with, TensorSpec};
use wanrt::io::{Checkpoint, FileFormat};
use wanrt::tensor::Storage;
use wanrt::{DType, Error, Result, Tensor};

mod common;
use common::fixtures_root;

fn fixture(rel: &str) -> PathBuf {
    let p = fixtures_root().join(rel);
    assert!(
        p.exists(),
        "missing fixture {} (set WANRT_FIXTURES)",
        p.display()
    );
    p
}

/// Every `*.safetensors` file under the fixtures, sorted.
fn fixture_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "safetensors") {
                out.push(p);
            }
        }
    }
    let root = fixtures_root();
    assert!(
        root.is_dir(),
        "fixtures not found at {} (set WANRT_FIXTURES)",
        root.display()
    );
    let mut out = Vec::new();
    walk(&root, &mut out);
    out.sort();
    out
}

/// The byte range a mapped tensor borrows, and the length of its map.
fn mapped_range(t: &Tensor) -> (std::ops::Range<usize>, usize) {
    match t.storage() {
        Storage::Mapped { map, range } => (range.clone(), map.len()),
        _ => panic!("tensor is not memory-mapped"),
    }
}

fn assert_same_tensors(a: &Checkpoint, b: &Checkpoint) {
    assert_eq!(
        a.tensors.keys().collect::<Vec<_>>(),
        b.tensors.keys().collect::<Vec<_>>()
    );
    for (name, ta) in &a.tensors {
        let tb = &b.tensors[name];
        assert_eq!((ta.dtype(), ta.dims()), (tb.dtype(), tb.dims()), "{name}");
        assert_eq!(ta.raw_bytes().unwrap(), tb.raw_bytes().unwrap(), "{name}");
    }
}

/// The `what` of a `BadFile` error; fails on success or on any other error.
fn bad(r: Result<Checkpoint>) -> String {
    match r {
        Err(Error::BadFile { what, .. }) => what,
        Err(e) => panic!("expected Error::BadFile, got {e:?}"),
        Ok(c) => panic!("expected an error, read {} tensors", c.tensors.len()),
    }
}

fn assert_mentions(what: &str, needles: &[&str]) {
    for n in needles {
        assert!(what.contains(n), "message `{what}` should mention `{n}`");
    }
}

/// A file from a header text and `data_len` zero bytes of data.
fn raw(header: &str, data_len: usize) -> Vec<u8> {
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(header.as_bytes());
    v.resize(v.len() + data_len, 0);
    v
}

fn put(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Reads `bytes` written to a fresh file and returns the error message.
fn bad_bytes(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    bad(read_file(&put(dir.path(), "bad.safetensors", bytes)))
}

fn f32_tensor(values: &[f32], dims: &[usize]) -> Tensor {
    Tensor::from_slice(values, dims).unwrap()
}

#[test]
fn every_fixture_file_loads_zero_copy_and_round_trips() {
    let files = fixture_files();
    assert!(files.len() > 20, "only {} fixture files found", files.len());
    let dir = tempfile::tempdir().unwrap();
    for path in &files {
        let ck = read_file(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(ck.format, FileFormat::Safetensors);
        assert!(!ck.tensors.is_empty(), "{}", path.display());
        assert!(
            ck.tensors.values().all(Tensor::is_mapped),
            "{}: not zero-copy",
            path.display()
        );

        let out = dir.path().join("copy.safetensors");
        let named: Vec<(&str, &Tensor)> = ck.tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        write_file(&out, &named, &ck.metadata).unwrap();
        let back = read_file(&out).unwrap();
        assert_same_tensors(&ck, &back);
        assert_eq!(ck.metadata, back.metadata, "{}", path.display());
        for t in back.tensors.values() {
            let (range, _) = mapped_range(t);
            assert_eq!(
                range.start % t.dtype().size_in_bytes(),
                0,
                "written tensor is misaligned"
            );
        }
        // The fixtures come from the Python writer: with at most one metadata key (whose
        // order cannot differ) the bytes must be the same.
        if ck.metadata.len() <= 1 {
            let same = std::fs::read(path).unwrap() == std::fs::read(&out).unwrap();
            assert!(
                same,
                "{}: written bytes differ from the Python writer's",
                path.display()
            );
        }
    }
    // Nothing but the output is left in the folder: the temporary file was renamed.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["copy.safetensors"]);
}

#[test]
fn sharded_folder_equals_single_file() {
    let single = read_file(&fixture("models/tiny-dit/dit_bf16.safetensors")).unwrap();
    let folder = fixture("models/tiny-dit-sharded");
    let sharded = read_folder(&folder).unwrap();
    assert_eq!(sharded.format, FileFormat::ShardedSafetensors);
    assert_eq!(sharded.path, folder);
    assert!(sharded.tensors.values().all(Tensor::is_mapped));
    assert_same_tensors(&single, &sharded);
    // `io::open` dispatches folders here too.
    let opened = wanrt::io::open(&folder).unwrap();
    assert_eq!(opened.format, FileFormat::ShardedSafetensors);
    assert_same_tensors(&single, &opened);
}

#[test]
fn folder_without_index_reads_its_single_model_file() {
    let dir = tempfile::tempdir().unwrap();
    put(dir.path(), "config.json", b"{}");
    let t = f32_tensor(&[1.0, 2.0], &[2]);
    write_file(
        &dir.path().join("model.safetensors"),
        &[("w", &t)],
        &BTreeMap::new(),
    )
    .unwrap();
    let ck = read_folder(dir.path()).unwrap();
    assert_eq!(ck.format, FileFormat::Safetensors);
    assert_eq!(ck.path, dir.path().join("model.safetensors"));
    assert_eq!(ck.tensors["w"].to_f32_vec().unwrap(), [1.0, 2.0]);
}

#[test]
fn folder_with_zero_or_several_model_files_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    put(dir.path(), "config.json", b"{}");
    let what = bad(read_folder(dir.path()));
    assert_mentions(&what, &["no model file", "config.json"]);

    let what = bad(read_folder(&fixture("models/tiny-dit")));
    assert_mentions(
        &what,
        &[
            "several model files",
            "dit_bf16.safetensors",
            "dit_f32.safetensors",
        ],
    );

    let file = fixture("models/tiny-dit/dit_bf16.safetensors");
    assert_mentions(&bad(read_folder(&file)), &["not a folder"]);
}

#[test]
fn write_file_replaces_atomically_and_checks_names() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    let a = f32_tensor(&[1.0, 2.0, 3.0], &[3]);
    let b = Tensor::from_slice(&[half::bf16::from_f32(0.5)], [1]).unwrap();
    let meta = BTreeMap::from([("k".to_string(), "v \"quoted\"".to_string())]);
    write_file(&path, &[("a", &a), ("b", &b)], &meta).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert_eq!(header_len % 8, 0);
    assert_eq!(
        &bytes[8..8 + header_len].trim_ascii_end()[..16],
        br#"{"__metadata__":"#
    );

    // Replacing a file that is mapped leaves the old mapping intact.
    let old = read_file(&path).unwrap();
    write_file(&path, &[("c", &a)], &BTreeMap::new()).unwrap();
    assert_eq!(old.tensors["a"].to_f32_vec().unwrap(), [1.0, 2.0, 3.0]);
    assert_eq!(old.tensors["b"].to_f32_vec().unwrap(), [0.5]);
    assert_eq!(old.metadata, meta);
    let new = read_file(&path).unwrap();
    assert_eq!(new.tensors.keys().collect::<Vec<_>>(), ["c"]);

    for names in [["a", "a"], ["a", "__metadata__"]] {
        let r = write_file(&path, &[(names[0], &a), (names[1], &b)], &BTreeMap::new());
        assert!(matches!(r, Err(Error::InvalidArgument(_))), "{r:?}");
    }
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["w.safetensors"]);
}

/// Tensors streamed through `write_file_with`, in any order, give the bytes `write_file` gives;
/// a tensor that is unknown, repeated, unlike its spec or never written, or an error from the
/// producer, leaves no file and the old one untouched.
#[test]
fn streamed_writes_match_write_file_and_check_every_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let a = f32_tensor(&[1.0, 2.0, 3.0], &[3]);
    let b = Tensor::from_slice(&[half::bf16::from_f32(0.5), half::bf16::ONE], [2, 1]).unwrap();
    let c = f32_tensor(&[4.0], &[]);
    let meta = BTreeMap::from([("k".to_string(), "v".to_string())]);
    let whole = dir.path().join("whole.safetensors");
    write_file(&whole, &[("a", &a), ("b", &b), ("c", &c)], &meta).unwrap();
    let spec = |name: &str, t: &Tensor| TensorSpec {
        name: name.into(),
        dtype: t.dtype(),
        dims: t.dims().to_vec(),
    };
    let specs = [spec("a", &a), spec("b", &b), spec("c", &c)];
    let path = dir.path().join("streamed.safetensors");
    write_file_with(&path, &specs, &meta, |put| {
        put("c", &c)?;
        put("b", &b)?;
        put("a", &a)
    })
    .unwrap();
    assert_eq!(
        std::fs::read(&path).unwrap(),
        std::fs::read(&whole).unwrap()
    );

    type Producer = fn(&mut dyn FnMut(&str, &Tensor) -> Result<()>, &[Tensor]) -> Result<()>;
    let cases: [(Producer, &str); 5] = [
        (
            |put, t| put("a", &t[0]).and(put("b", &t[1])),
            "`c` was never written",
        ),
        (
            |put, t| put("a", &t[0]).and(put("a", &t[0])),
            "`a` written twice",
        ),
        (|put, t| put("d", &t[0]), "`d` is not in the header"),
        (|put, t| put("b", &t[0]), "but the header says bf16 [2, 1]"),
        (
            |put, t| put("a", &t[0]).and(Err(Error::Cancelled)),
            "cancelled",
        ),
    ];
    let tensors = [a.clone(), b.clone(), c.clone()];
    for (produce, message) in cases {
        let err = write_file_with(&path, &specs, &meta, |put| produce(put, &tensors)).unwrap_err();
        assert!(err.to_string().contains(message), "{err}");
    }
    assert_eq!(
        std::fs::read(&path).unwrap(),
        std::fs::read(&whole).unwrap()
    );
    let mut left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    left.sort();
    assert_eq!(left, ["streamed.safetensors", "whole.safetensors"]);
}

const GOOD: &str = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;

#[test]
fn hand_built_good_file_reads() {
    let dir = tempfile::tempdir().unwrap();
    let ck = read_file(&put(dir.path(), "good.safetensors", &raw(GOOD, 8))).unwrap();
    assert_eq!(ck.tensors["a"].dims(), [2]);
    // Header padding, null metadata, zero-sized and scalar tensors are all valid.
    let h = r#"{"__metadata__":null,"e":{"dtype":"BF16","shape":[0,3],"data_offsets":[0,0]},"s":{"dtype":"F8_E4M3","shape":[],"data_offsets":[0,1]}}   "#;
    let ck = read_file(&put(dir.path(), "edge.safetensors", &raw(h, 1))).unwrap();
    assert_eq!(
        (ck.tensors["e"].elem_count(), ck.tensors["s"].dtype()),
        (0, DType::F8E4M3)
    );
}

#[test]
fn short_and_truncated_files_are_rejected() {
    for n in [0, 1, 7] {
        assert_mentions(
            &bad_bytes(&vec![0; n]),
            &[&format!("{n} bytes long"), "shorter than"],
        );
    }
    let full = raw(GOOD, 8);
    let header_end = full.len() - 8;
    for cut in [8, 9, header_end - 1] {
        assert_mentions(
            &bad_bytes(&full[..cut]),
            &["header length", "runs past the end"],
        );
    }
    for cut in [header_end, full.len() - 1] {
        assert_mentions(
            &bad_bytes(&full[..cut]),
            &["tensor `a`", "past the end of the file"],
        );
    }
}

#[test]
fn lying_header_length_is_rejected() {
    let mut file = raw(GOOD, 8);
    for len in [u64::MAX, 1 << 40, file.len() as u64 - 7] {
        file[..8].copy_from_slice(&len.to_le_bytes());
        assert_mentions(
            &bad_bytes(&file),
            &[&format!("header length {len}"), "runs past the end"],
        );
    }
    // Too short: the JSON is cut.
    file[..8].copy_from_slice(&20u64.to_le_bytes());
    assert_mentions(&bad_bytes(&file), &["invalid header", "EOF"]);

    // Inside the file but over the format's limit: a sparse file, nothing is read or allocated.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.safetensors");
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(&100_000_001u64.to_le_bytes()).unwrap();
    f.set_len(200_000_000).unwrap();
    drop(f);
    assert_mentions(
        &bad(read_file(&path)),
        &["header length 100000001", "limit"],
    );
}

#[test]
fn bad_offsets_are_rejected_with_the_tensor_name() {
    let cases: [(&str, usize, &[&str]); 6] = [
        (
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
            12,
            &["tensor `b`", "overlap tensor `a`", "file bytes"],
        ),
        (
            r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
            8,
            &["tensor `a`", "past the end"],
        ),
        (
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#,
            12,
            &["tensor `b`", "gap", "belong to no tensor"],
        ),
        (
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
            8,
            &["after the last tensor", "no tensor"],
        ),
        (
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}}"#,
            4,
            &["tensor `a`", "end before they start"],
        ),
        (
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[1,5]}}"#,
            5,
            &["tensor `a`", "gap"],
        ),
    ];
    for (header, data, needles) in cases {
        assert_mentions(&bad_bytes(&raw(header, data)), needles);
    }
}

#[test]
fn bad_shapes_and_dtypes_are_rejected_with_the_tensor_name() {
    let h = r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#;
    assert_mentions(
        &bad_bytes(&raw(h, 8)),
        &["tensor `a`", "12 bytes", "hold 8 bytes"],
    );
    for shape in [
        "[4294967296,4294967296,2]",
        "[4611686018427387904]",
        "[18446744073709551615,2]",
    ] {
        let h = format!(r#"{{"big":{{"dtype":"F32","shape":{shape},"data_offsets":[0,8]}}}}"#);
        assert_mentions(&bad_bytes(&raw(&h, 8)), &["tensor `big`", "overflows"]);
    }
    let h = r#"{"a":{"dtype":"Q8_0","shape":[8],"data_offsets":[0,8]}}"#;
    assert_mentions(
        &bad_bytes(&raw(h, 8)),
        &["tensor `a`", "unknown dtype `Q8_0`"],
    );
    let h = r#"{"a":{"dtype":"U16","shape":[4],"data_offsets":[0,8]}}"#;
    assert_mentions(
        &bad_bytes(&raw(h, 8)),
        &["tensor `a`", "`U16` is not supported"],
    );
    let h = r#"{"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}"#;
    assert_mentions(&bad_bytes(&raw(h, 8)), &["tensor `a`", "invalid value"]);
    let h = r#"{"a":{"dtype":"F32","shape":[2]}}"#;
    assert_mentions(
        &bad_bytes(&raw(h, 8)),
        &["tensor `a`", "missing field `data_offsets`"],
    );
}

#[test]
fn duplicate_keys_and_bad_metadata_are_rejected() {
    let t = r#"{"dtype":"F32","shape":[1],"data_offsets":[0,4]}"#;
    let h = format!(r#"{{"a":{t},"a":{t}}}"#);
    assert_mentions(&bad_bytes(&raw(&h, 4)), &["duplicate key `a`", "file byte"]);
    let h = format!(r#"{{"__metadata__":{{}},"a":{t},"__metadata__":{{}}}}"#);
    assert_mentions(&bad_bytes(&raw(&h, 4)), &["duplicate key `__metadata__`"]);
    let h = format!(r#"{{"__metadata__":{{"k":"1","k":"2"}},"a":{t}}}"#);
    assert_mentions(
        &bad_bytes(&raw(&h, 4)),
        &["`__metadata__`", "duplicate key `k`"],
    );
    let h = format!(r#"{{"__metadata__":{{"k":1}},"a":{t}}}"#);
    assert_mentions(
        &bad_bytes(&raw(&h, 4)),
        &["`__metadata__`", "expected a string"],
    );
    let h = format!(r#"{{"__metadata__":["k"],"a":{t}}}"#);
    assert_mentions(
        &bad_bytes(&raw(&h, 4)),
        &["`__metadata__`", "expected an object of strings to strings"],
    );
}

#[test]
fn non_json_headers_are_rejected() {
    for (header, needle) in [
        ("hello, world", "expected value"),
        ("[1, 2, 3]", "expected a JSON object"),
        (
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}} x"#,
            "trailing characters",
        ),
    ] {
        assert_mentions(
            &bad_bytes(&raw(header, 4)),
            &["invalid header", "near file byte", needle],
        );
    }
    let mut latin1 = raw("{\"\u{e9}\":{}}", 0);
    latin1[10] = 0xe9; // a lone Latin-1 byte: not UTF-8
    assert_mentions(&bad_bytes(&latin1), &["invalid header"]);
}

#[test]
fn header_errors_point_at_the_offending_file_byte() {
    let t = r#"{"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}"#;
    for header in [
        format!(r#"{{"a": {t} x}}"#),
        format!("{{\n  \"a\": {t},\n  \"b\": {t} x\n}}"),
    ] {
        let at = 8 + header.find(" x").unwrap() + 1;
        assert_mentions(
            &bad_bytes(&raw(&header, 8)),
            &[&format!("near file byte {at}:")],
        );
    }
}

/// A header of `n` zero-size tensors (the cheapest entries a hostile header can hold).
fn empty_tensors(n: usize) -> Vec<u8> {
    let entries: Vec<String> = (0..n)
        .map(|i| format!(r#""t{i}":{{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}"#))
        .collect();
    raw(&format!("{{{}}}", entries.join(",")), 0)
}

#[test]
fn tensor_count_and_rank_are_bounded() {
    use wanrt::io::safetensors::{MAX_RANK, MAX_TENSORS};
    let dir = tempfile::tempdir().unwrap();
    let at_limit = put(dir.path(), "many.safetensors", &empty_tensors(MAX_TENSORS));
    assert_eq!(read_file(&at_limit).unwrap().tensors.len(), MAX_TENSORS);
    assert_mentions(
        &bad_bytes(&empty_tensors(MAX_TENSORS + 1)),
        &[&format!("more than {MAX_TENSORS} tensors")],
    );
    let entries: Vec<String> = (0..=MAX_TENSORS).map(|i| format!(r#""k{i}":"""#)).collect();
    let metadata = format!(r#"{{"__metadata__":{{{}}}}}"#, entries.join(","));
    assert_mentions(
        &bad_bytes(&raw(&metadata, 0)),
        &[
            "in `__metadata__`",
            &format!("more than {MAX_TENSORS} entries"),
        ],
    );
    let dims = |rank: usize| vec!["1"; rank].join(",");
    let header = |rank| {
        format!(
            r#"{{"t":{{"dtype":"U8","shape":[{}],"data_offsets":[0,1]}}}}"#,
            dims(rank)
        )
    };
    let ok = put(dir.path(), "rank.safetensors", &raw(&header(MAX_RANK), 1));
    assert_eq!(read_file(&ok).unwrap().tensors["t"].dims().len(), MAX_RANK);
    assert_mentions(
        &bad_bytes(&raw(&header(MAX_RANK + 1), 1)),
        &["tensor `t`", &format!("more than {MAX_RANK} dimensions")],
    );
}

#[cfg(unix)]
#[test]
fn special_files_are_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("x.safetensors");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    // Each of these blocked forever on the FIFO before.
    assert_mentions(
        &bad(wanrt::io::open(&fifo)),
        &["is a FIFO", "not a regular file"],
    );
    assert_mentions(&bad(read_file(&fifo)), &["is a FIFO"]);
    assert_mentions(
        &bad(wanrt::io::open(Path::new("/dev/zero"))),
        &["is a device"],
    );
    // A link to a regular file is followed.
    let file = put(dir.path(), "real.safetensors", &raw("{}", 0));
    let link = dir.path().join("link.safetensors");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    assert!(read_file(&link).unwrap().tensors.is_empty());
}

#[test]
fn directory_instead_of_file_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("model.safetensors");
    std::fs::create_dir(&sub).unwrap();
    assert_mentions(
        &bad(read_file(&sub)),
        &["is a folder", "not a regular file"],
    );
    match read_file(&dir.path().join("absent.safetensors")) {
        Err(Error::Io { source, .. }) => assert_eq!(source.kind(), std::io::ErrorKind::NotFound),
        other => panic!("expected Error::Io, got {other:?}"),
    }
}

/// A folder with two shards `s1.safetensors` (`a`, `b`) and `s2.safetensors` (`c`) and the given
/// index text.
fn sharded(index: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let t = f32_tensor(&[1.0, 2.0], &[2]);
    let none = BTreeMap::new();
    write_file(
        &dir.path().join("s1.safetensors"),
        &[("a", &t), ("b", &t)],
        &none,
    )
    .unwrap();
    write_file(&dir.path().join("s2.safetensors"), &[("c", &t)], &none).unwrap();
    put(dir.path(), "model.safetensors.index.json", index.as_bytes());
    dir
}

fn index(map: &[(&str, &str)]) -> String {
    let entries: Vec<String> = map.iter().map(|(t, s)| format!("{t:?}: {s:?}")).collect();
    format!(
        "{{\"metadata\": {{\"total_size\": 24}}, \"weight_map\": {{{}}}}}",
        entries.join(", ")
    )
}

const GOOD_MAP: [(&str, &str); 3] = [
    ("a", "s1.safetensors"),
    ("b", "s1.safetensors"),
    ("c", "s2.safetensors"),
];

#[test]
fn hand_built_sharded_folder_reads() {
    let dir = sharded(&index(&GOOD_MAP));
    let ck = read_folder(dir.path()).unwrap();
    assert_eq!(ck.format, FileFormat::ShardedSafetensors);
    assert_eq!(ck.tensors.keys().collect::<Vec<_>>(), ["a", "b", "c"]);
}

#[test]
fn bad_shard_names_are_rejected() {
    let outside = tempfile::tempdir().unwrap();
    let abs = outside.path().join("s1.safetensors");
    std::fs::copy(sharded("{}").path().join("s1.safetensors"), &abs).unwrap();
    let abs = abs.to_str().unwrap();
    for name in [
        "../s1.safetensors",
        abs,
        "sub/s1.safetensors",
        "./s1.safetensors",
        "..",
        "",
        "s1\\x",
    ] {
        let dir = sharded(&index(&[
            ("a", name),
            ("b", "s1.safetensors"),
            ("c", "s2.safetensors"),
        ]));
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::copy(
            dir.path().join("s1.safetensors"),
            dir.path().join("sub/s1.safetensors"),
        )
        .unwrap();
        let what = bad(read_folder(dir.path()));
        assert_mentions(
            &what,
            &["tensor `a`", "not a plain file name inside the folder"],
        );
    }
}

/// A weight map and what the error about it must mention.
type IndexCase<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);

#[test]
fn inconsistent_indexes_are_rejected() {
    let cases: [IndexCase; 5] = [
        (
            &[
                ("a", "s1.safetensors"),
                ("b", "s1.safetensors"),
                ("c", "s3.safetensors"),
            ],
            &["shard `s3.safetensors`", "not in the folder"],
        ),
        (
            &[
                ("a", "s1.safetensors"),
                ("b", "s2.safetensors"),
                ("c", "s2.safetensors"),
            ],
            &["tensor `b`", "maps it to `s2.safetensors`"],
        ),
        (
            &[("a", "s1.safetensors"), ("c", "s2.safetensors")],
            &["tensor `b`", "does not list"],
        ),
        (
            &[
                ("a", "s1.safetensors"),
                ("b", "s1.safetensors"),
                ("c", "s2.safetensors"),
                ("d", "s2.safetensors"),
            ],
            &["tensor `d`", "does not contain it"],
        ),
        (&[], &["lists no tensors"]),
    ];
    for (map, needles) in cases {
        assert_mentions(&bad(read_folder(sharded(&index(map)).path())), needles);
    }
    // A tensor in two shards.
    let dir = sharded(&index(&GOOD_MAP));
    let t = f32_tensor(&[0.0], &[1]);
    write_file(
        &dir.path().join("s2.safetensors"),
        &[("a", &t), ("c", &t)],
        &BTreeMap::new(),
    )
    .unwrap();
    assert_mentions(
        &bad(read_folder(dir.path())),
        &["tensor `a`", "appears in two shards"],
    );
    // Duplicate keys in the weight map, and an index that is not JSON.
    let dup = r#"{"weight_map": {"a": "s1.safetensors", "a": "s2.safetensors"}}"#;
    assert_mentions(
        &bad(read_folder(sharded(dup).path())),
        &["duplicate key `a`", "line 1"],
    );
    assert_mentions(
        &bad(read_folder(sharded("{weight_map").path())),
        &["invalid index"],
    );
    assert_mentions(
        &bad(read_folder(sharded(r#"{"weight_map": {"a": 1}}"#).path())),
        &["expected a string"],
    );
    // Two indexes.
    let dir = sharded(&index(&GOOD_MAP));
    put(dir.path(), "other.safetensors.index.json", b"{}");
    assert_mentions(
        &bad(read_folder(dir.path())),
        &["several weight-map indexes"],
    );
    // A bad shard is reported with its own path.
    let dir = sharded(&index(&GOOD_MAP));
    put(dir.path(), "s2.safetensors", &[1, 2, 3]);
    match read_folder(dir.path()) {
        Err(Error::BadFile { path, what }) => {
            assert!(path.ends_with("s2.safetensors"), "{}", path.display());
            assert_mentions(&what, &["shorter than"]);
        }
        other => panic!("expected BadFile, got {other:?}"),
    }
}

/// Small valid fixture files that the property tests mutate.
fn seeds() -> &'static [Vec<u8>] {
    static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        [
            "models/tiny-lora/lora_musubi.safetensors",
            "models/tiny-dit/dit_fp8_e4m3fn_scaled.safetensors",
            "models/tiny-umt5/umt5_enc_f32.safetensors",
            "cases/dit_forward_nag_s3/inputs.safetensors",
        ]
        .iter()
        .map(|rel| std::fs::read(fixture(rel)).unwrap())
        .collect()
    })
}

#[derive(Debug, Clone)]
enum Mutation {
    /// XOR bytes of the 8-byte header length.
    Length(Vec<(usize, u8)>),
    /// XOR bytes of the header JSON.
    Header(Vec<(prop::sample::Index, u8)>),
    /// Replace digits of the header (offsets, shapes) by other digits.
    Digits(Vec<(prop::sample::Index, u8)>),
    /// Cut the file.
    Truncate(prop::sample::Index),
    /// Replace a range of the file by a range of another seed.
    Splice {
        from: prop::sample::Index,
        src: [prop::sample::Index; 2],
        dst: [prop::sample::Index; 2],
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let flip = || (any::<prop::sample::Index>(), 1u8..=255);
    prop_oneof![
        prop::collection::vec((0usize..8, 1u8..=255), 1..3).prop_map(Mutation::Length),
        prop::collection::vec(flip(), 1..4).prop_map(Mutation::Header),
        prop::collection::vec((any::<prop::sample::Index>(), b'0'..=b'9'), 1..4)
            .prop_map(Mutation::Digits),
        any::<prop::sample::Index>().prop_map(Mutation::Truncate),
        any::<(
            prop::sample::Index,
            [prop::sample::Index; 2],
            [prop::sample::Index; 2]
        )>()
        .prop_map(|(from, src, dst)| Mutation::Splice { from, src, dst }),
    ]
}

fn apply(seed: &[u8], m: &Mutation) -> Vec<u8> {
    let mut v = seed.to_vec();
    let header_end = 8 + u64::from_le_bytes(seed[..8].try_into().unwrap()) as usize;
    match m {
        Mutation::Length(flips) => flips.iter().for_each(|&(i, x)| v[i] ^= x),
        Mutation::Header(flips) => flips
            .iter()
            .for_each(|(i, x)| v[8 + i.index(header_end - 8)] ^= x),
        Mutation::Digits(edits) => {
            let digits: Vec<usize> = (8..header_end).filter(|&i| v[i].is_ascii_digit()).collect();
            edits
                .iter()
                .for_each(|(i, d)| v[digits[i.index(digits.len())]] = *d);
        }
        Mutation::Truncate(at) => v.truncate(at.index(v.len())),
        Mutation::Splice { from, src, dst } => {
            let other = &seeds()[from.index(seeds().len())];
            let mut s = [src[0].index(other.len()), src[1].index(other.len())];
            let mut d = [dst[0].index(v.len()), dst[1].index(v.len())];
            s.sort();
            d.sort();
            v.splice(d[0]..d[1], other[s[0]..s[1]].iter().copied());
        }
    }
    v
}

/// Reads `bytes` and checks the outcome: a typed error, or tensors that lie inside the file,
/// do not overlap, have the byte size of their dtype and shape, and agree with the
/// `safetensors` crate.
fn check_mutant(bytes: &[u8]) -> std::result::Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let path = put(dir.path(), "m.safetensors", bytes);
    match read_file(&path) {
        Err(Error::BadFile { what, .. }) => prop_assert!(!what.is_empty()),
        Err(e) => prop_assert!(false, "unexpected error variant {e:?}"),
        Ok(ck) => {
            let reference =
                safetensors::SafeTensors::deserialize(bytes).expect("reference rejects it");
            let mut ranges = Vec::new();
            for (name, t) in &ck.tensors {
                let (range, map_len) = mapped_range(t);
                prop_assert_eq!(map_len, bytes.len());
                prop_assert!(range.start >= 8 && range.end <= bytes.len());
                prop_assert_eq!(range.len(), t.elem_count() * t.dtype().size_in_bytes());
                prop_assert_eq!(
                    t.raw_bytes().unwrap(),
                    reference.tensor(name).unwrap().data()
                );
                ranges.push(range);
            }
            ranges.sort_by_key(|r| (r.start, r.end));
            prop_assert!(ranges.windows(2).all(|w| w[0].end <= w[1].start));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_files_never_panic(seed in any::<prop::sample::Index>(), m in mutation()) {
        let seed = &seeds()[seed.index(seeds().len())];
        check_mutant(&apply(seed, &m))?;
    }
}

fn any_tensor() -> impl Strategy<Value = Tensor> {
    (
        prop::sample::select(DType::ALL.to_vec()),
        prop::collection::vec(0usize..4, 0..4),
    )
        .prop_flat_map(|(dtype, dims)| {
            let n = dims.iter().product::<usize>() * dtype.size_in_bytes();
            prop::collection::vec(any::<u8>(), n)
                .prop_map(move |bytes| Tensor::from_bytes(bytes, dtype, dims.as_slice()).unwrap())
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn write_then_read_round_trips(
        tensors in prop::collection::btree_map("[a-z.\"\\\\é]{1,6}", any_tensor(), 0..6),
        metadata in prop::collection::btree_map(".{0,5}", ".{0,5}", 0..3),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rt.safetensors");
        let named: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        write_file(&path, &named, &metadata).unwrap();
        let back = read_file(&path).unwrap();
        prop_assert_eq!(&back.metadata, &metadata);
        prop_assert_eq!(back.tensors.len(), tensors.len());
        for (name, t) in &tensors {
            let b = &back.tensors[name];
            prop_assert_eq!((b.dtype(), b.dims()), (t.dtype(), t.dims()));
            prop_assert_eq!(b.raw_bytes().unwrap(), t.raw_bytes().unwrap());
        }
    }
}
