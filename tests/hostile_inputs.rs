//! Damaged and special input files: damaged `tokenizer.json`s (property-tested), FIFOs and
//! devices given as model files, tokenizers and configs. Each must give a typed error naming
//! the file, quickly: never a panic, an abort, a hang or an unbounded read.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use base64::Engine;
use proptest::prelude::*;
use serde_json::Value;
use wanrt::error::Status;
use wanrt::model::t5::Umt5Tokenizer;
use wanrt::pipeline::{ModelSource, Pipeline};
use wanrt::Error;

mod common;
use common::model;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Prompts that reach the charsmap's rewrites: full-width letters, ligatures, circled digits,
/// combining marks, CJK, emoji, zero-width and control characters.
const PROBES: [&str; 4] = [
    "A red fox trots through fresh snow at dawn.",
    "ＡＢＣ ﬁne ① ™ café cafe\u{301} ½ Ⅻ",
    "雪の中の狐 여우 🦊👍🏽 \u{200b}\u{feff}\t\u{7f}",
    "ｶﾞ ㌔ ﹏ Å Ω µ",
];

/// The fixture tokenizer's text.
fn fixture_json() -> &'static Value {
    static JSON: OnceLock<Value> = OnceLock::new();
    JSON.get_or_init(|| {
        let text = std::fs::read(model("tiny-umt5/tokenizer.json")).unwrap();
        serde_json::from_slice(&text).unwrap()
    })
}

/// The fixture's decoded `precompiled_charsmap`.
fn fixture_charsmap() -> Vec<u8> {
    let s = charsmap_slot(&mut fixture_json().clone())
        .as_str()
        .unwrap()
        .to_string();
    B64.decode(s).unwrap()
}

/// The `precompiled_charsmap` value of a tokenizer.json shaped like google/umt5-xxl's.
fn charsmap_slot(json: &mut Value) -> &mut Value {
    &mut json["normalizer"]["normalizers"][0]["precompiled_charsmap"]
}

/// The fixture's text with its charsmap replaced by `value`.
fn with_charsmap(value: Value) -> Vec<u8> {
    let mut json = fixture_json().clone();
    *charsmap_slot(&mut json) = value;
    serde_json::to_vec(&json).unwrap()
}

fn encoded(bytes: &[u8]) -> Value {
    Value::String(B64.encode(bytes))
}

const SOURCE: &str = "damaged/tokenizer.json";

/// A typed error for the file: `BAD_FILE` status, the file named, no trace of a panic report.
fn assert_bad_file(e: &Error) {
    assert_eq!(e.status(), Status::BadFile, "{e}");
    let msg = e.to_string();
    assert!(msg.starts_with(SOURCE), "{msg}");
    assert!(!msg.contains("internal error"), "{msg}");
}

fn load(json: &[u8]) -> Result<Umt5Tokenizer, Error> {
    Umt5Tokenizer::from_bytes(json, SOURCE)
}

#[test]
fn the_fixture_charsmap_passes_and_tokenizes() {
    let tok = load(&with_charsmap(encoded(&fixture_charsmap()))).unwrap();
    for p in PROBES {
        assert!(tok.tokenize(p).unwrap().ids.len() > 1);
    }
}

#[test]
fn giant_trie_sizes_are_bad_files_not_aborts() {
    let mut bytes = fixture_charsmap();
    for size in [0x7FFF_FFFCu32, u32::MAX, bytes.len() as u32] {
        bytes[..4].copy_from_slice(&size.to_le_bytes());
        let e = load(&with_charsmap(encoded(&bytes))).unwrap_err();
        assert_bad_file(&e);
        assert!(
            e.to_string()
                .contains(&format!("declares a trie of {size} bytes")),
            "{e}"
        );
    }
}

#[test]
fn wrong_types_and_bad_base64_are_bad_files() {
    for (value, needle) in [
        (Value::from(7), "is a number"),
        (Value::Null, "is null"),
        (serde_json::json!({"a": 1}), "is an object"),
        (Value::from("%%%"), "not valid base64"),
        (Value::from("QUJD"), "3 bytes, too short"),
    ] {
        let e = load(&with_charsmap(value)).unwrap_err();
        assert_bad_file(&e);
        assert!(e.to_string().contains(needle), "{needle}: {e}");
    }
}

#[test]
fn a_trie_pointing_outside_itself_fails_at_load_not_at_tokenization() {
    // The root's offset sends every lookup past the end of the trie.
    let mut bytes = fixture_charsmap();
    bytes[4..8].copy_from_slice(&(0x3F_FFFFu32 << 10).to_le_bytes());
    let e = load(&with_charsmap(encoded(&bytes))).unwrap_err();
    assert_bad_file(&e);
    assert!(e.to_string().contains("run past the trie"), "{e}");
}

/// Damage to the decoded charsmap.
#[derive(Debug, Clone)]
enum Damage {
    /// XOR some bytes.
    Flip(Vec<(prop::sample::Index, u8)>),
    /// Cut it.
    Truncate(prop::sample::Index),
    /// Declare another trie size.
    TrieSize(u32),
    /// Overwrite one trie unit with any value.
    Unit(prop::sample::Index, u32),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4)
            .prop_map(Damage::Flip),
        any::<prop::sample::Index>().prop_map(Damage::Truncate),
        any::<u32>().prop_map(Damage::TrieSize),
        (any::<prop::sample::Index>(), any::<u32>()).prop_map(|(i, u)| Damage::Unit(i, u)),
    ]
}

fn apply(mut b: Vec<u8>, d: &Damage) -> Vec<u8> {
    match d {
        Damage::Flip(flips) => {
            let n = b.len();
            flips.iter().for_each(|(i, x)| b[i.index(n)] ^= x);
        }
        Damage::Truncate(at) => b.truncate(at.index(b.len())),
        Damage::TrieSize(s) => b[..4].copy_from_slice(&s.to_le_bytes()),
        Damage::Unit(i, u) => {
            let units = u32::from_le_bytes(b[..4].try_into().unwrap()) as usize / 4;
            let at = 4 + 4 * i.index(units);
            b[at..at + 4].copy_from_slice(&u.to_le_bytes());
        }
    }
    b
}

/// Damage to the file's text as a whole.
#[derive(Debug, Clone)]
enum TextDamage {
    Flip(Vec<(prop::sample::Index, u8)>),
    Truncate(prop::sample::Index),
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// A damaged charsmap is refused at load, or is one the crate handles: then every prompt
    /// tokenizes (no panic contained into an error either).
    #[test]
    fn damaged_charsmaps_are_refused_or_safe(d in damage()) {
        match load(&with_charsmap(encoded(&apply(fixture_charsmap(), &d)))) {
            Err(e) => assert_bad_file(&e),
            Ok(tok) => {
                for p in PROBES {
                    prop_assert!(tok.tokenize(p).is_ok(), "{p}");
                }
            }
        }
    }

    /// A damaged file text gives a typed error naming the file, at load or at tokenization.
    #[test]
    fn damaged_files_give_typed_errors(d in prop_oneof![
        prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4).prop_map(TextDamage::Flip),
        any::<prop::sample::Index>().prop_map(TextDamage::Truncate),
    ]) {
        let mut text = serde_json::to_vec(fixture_json()).unwrap();
        match &d {
            TextDamage::Flip(flips) => {
                let n = text.len();
                flips.iter().for_each(|(i, x)| text[i.index(n)] ^= x);
            }
            TextDamage::Truncate(at) => text.truncate(at.index(text.len())),
        }
        match load(&text) {
            Err(e) => assert_bad_file(&e),
            Ok(tok) => {
                for p in PROBES {
                    if let Err(e) = tok.tokenize(p) {
                        assert_bad_file(&e);
                    }
                }
            }
        }
    }
}

/// A FIFO at `dir/name`.
fn fifo(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    let made = Command::new("mkfifo").arg(&p).status().unwrap();
    assert!(made.success(), "mkfifo {}", p.display());
    p
}

fn tiny_source() -> ModelSource {
    ModelSource {
        dit: Some(model("tiny-dit/dit_f32.safetensors")),
        vae: Some(model("tiny-vae/vae_f32.safetensors")),
        t5: Some(model("tiny-umt5/umt5_enc_f32.safetensors")),
        tokenizer: Some(model("tiny-umt5/tokenizer.json")),
        dit_config: Some(model("tiny-dit/config.json")),
        ..ModelSource::default()
    }
}

/// What `Pipeline::load` (the Rust API under the C ABI's `wanrt_pipeline_load`) says of `src`.
fn load_error(src: ModelSource) -> Error {
    match src
        .resolve()
        .and_then(|f| Pipeline::load(&f, &[], &wanrt::pipeline::LoadOptions::default()))
    {
        Err(e) => e,
        Ok(_) => panic!("loaded"),
    }
}

#[cfg(unix)]
#[test]
fn special_files_fail_fast_through_the_library() {
    let dir = tempfile::tempdir().unwrap();
    let pipe = fifo(dir.path(), "tokenizer.json");
    let zero = PathBuf::from("/dev/zero");
    let cases = [
        (
            ModelSource {
                tokenizer: Some(pipe.clone()),
                ..tiny_source()
            },
            "is a FIFO",
        ),
        (
            ModelSource {
                tokenizer: Some(zero.clone()),
                ..tiny_source()
            },
            "is a device",
        ),
        (
            ModelSource {
                dit_config: Some(zero.clone()),
                ..tiny_source()
            },
            "is a device",
        ),
        (
            ModelSource {
                dit: Some(fifo(dir.path(), "x.safetensors")),
                ..tiny_source()
            },
            "is a FIFO",
        ),
    ];
    for (src, needle) in cases {
        let e = load_error(src);
        assert_eq!(e.status(), Status::BadFile, "{e}");
        assert!(e.to_string().contains(needle), "{e}");
    }
    // A Wan-AI folder whose tokenizer.json is a FIFO.
    let wan = dir.path().join("wan");
    std::fs::create_dir_all(wan.join("google/umt5-xxl")).unwrap();
    for (src, name) in [
        (
            "tiny-dit/dit_f32.safetensors",
            "diffusion_pytorch_model.safetensors",
        ),
        ("tiny-dit/config.json", "config.json"),
        ("tiny-vae/vae_bf16.pth", "Wan2.1_VAE.pth"),
        (
            "tiny-umt5/umt5_enc_bf16.pth",
            "models_t5_umt5-xxl-enc-bf16.pth",
        ),
    ] {
        std::os::unix::fs::symlink(model(src), wan.join(name)).unwrap();
    }
    fifo(&wan.join("google/umt5-xxl"), "tokenizer.json");
    let e = load_error(ModelSource {
        models_dir: Some(wan),
        ..ModelSource::default()
    });
    assert_eq!(e.status(), Status::BadFile, "{e}");
    assert!(e.to_string().contains("tokenizer.json: is a FIFO"), "{e}");
}

#[test]
fn oversized_tokenizers_and_configs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("config.json");
    let file = std::fs::File::create(&big).unwrap();
    // Sparse: no disk space used.
    file.set_len(wanrt::io::input::TOKENIZER_LIMIT + 1).unwrap();
    for src in [
        ModelSource {
            tokenizer: Some(big.clone()),
            ..tiny_source()
        },
        ModelSource {
            dit_config: Some(big.clone()),
            ..tiny_source()
        },
    ] {
        let e = load_error(src);
        assert_eq!(e.status(), Status::BadFile, "{e}");
        assert!(e.to_string().contains("-byte limit for a"), "{e}");
    }
}

fn wanrt(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wanrt"))
        .args(args)
        .output()
        .expect("run wanrt")
}

#[cfg(unix)]
#[test]
fn special_files_fail_fast_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let pipe = fifo(dir.path(), "x.safetensors");
    let out = wanrt(&["inspect".as_ref(), pipe.as_os_str(), "/dev/zero".as_ref()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("x.safetensors: is a FIFO"), "{stderr}");
    assert!(stderr.contains("/dev/zero: is a device"), "{stderr}");
    let tok = fifo(dir.path(), "tokenizer.json");
    let mut args: Vec<&std::ffi::OsStr> =
        vec!["generate".as_ref(), "--prompt".as_ref(), "a fox".as_ref()];
    let flags = [
        ("--dit", model("tiny-dit/dit_f32.safetensors")),
        ("--vae", model("tiny-vae/vae_f32.safetensors")),
        ("--t5", model("tiny-umt5/umt5_enc_f32.safetensors")),
        ("--dit-config", "/dev/zero".into()),
        ("--tokenizer", tok),
        ("--out", dir.path().join("out.mp4")),
    ];
    for (flag, path) in &flags {
        args.push(flag.as_ref());
        args.push(path.as_os_str());
    }
    let out = wanrt(&args);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is a FIFO") || stderr.contains("is a device"),
        "{stderr}"
    );
    assert!(!stderr.contains("internal error"), "{stderr}");
}
