//! The UMT5 text encoder's API, caches and input errors (its fixture cases run in the harness,
//! `tests/kinds/t5.rs`). Fixtures: `$WANRT_FIXTURES`, default `../shared/fixtures` next to the crate.

use std::path::{Path, PathBuf};

use wanrt::model::t5::{file_identity, TextEncoder, Umt5Encoder, Umt5Tokenizer};
use wanrt::{Error, Tensor};

mod common;
use common::{model, rel_l2_f32};

fn umt5_dir() -> PathBuf {
    model("tiny-umt5")
}

fn encoder() -> Umt5Encoder {
    let d = umt5_dir();
    Umt5Encoder::open(
        d.join("umt5_enc_f32.safetensors"),
        Some(&d.join("config.json")),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn tokenizer() -> Umt5Tokenizer {
    Umt5Tokenizer::from_file(umt5_dir().join("tokenizer.json")).unwrap_or_else(|e| panic!("{e}"))
}

fn text_encoder() -> TextEncoder {
    let d = umt5_dir();
    TextEncoder::open(
        d.join("umt5_enc_f32.safetensors"),
        Some(&d.join("config.json")),
        d.join("tokenizer.json"),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn values(t: &Tensor) -> Vec<f32> {
    t.to_f32_vec().unwrap()
}

const PROMPT: &str = "Studio Ghibli style. A girl with short brown hair stands on a windy hill.";
const NEGATIVE: &str = "3D, CGI, blurry, low quality, extra fingers";

#[test]
fn the_same_prompt_is_encoded_once() {
    let te = text_encoder();
    let a = te.encode(PROMPT).unwrap();
    let n = te.encode(NEGATIVE).unwrap();
    for _ in 0..3 {
        let again = te.encode(PROMPT).unwrap();
        assert_eq!(values(&again.context), values(&a.context));
        te.encode(NEGATIVE).unwrap();
    }
    // Differently spaced and escaped, the same cleaned prompt: the same entry.
    let spaced = te
        .encode(&format!("  {}  ", PROMPT.replace(' ', "   ")))
        .unwrap();
    assert_eq!(spaced.tokens.ids, a.tokens.ids);
    let s = te.stats();
    assert_eq!((s.encoded, s.memory_hits, s.disk_hits), (2, 7, 0), "{s:?}");
    let dim = te.encoder().config().dim;
    assert_eq!(a.context.dims(), [a.tokens.ids.len(), dim]);
    assert_eq!(n.context.dims(), [n.tokens.ids.len(), dim]);
}

#[test]
fn memory_cache_is_lru() {
    let te = text_encoder().with_memory_capacity(2);
    for p in ["a fox", "a cat", "a fox", "a boy", "a fox", "a cat"] {
        te.encode(p).unwrap();
    }
    // fox, cat: new; fox: hit; boy: new, evicts cat; fox: hit; cat: new again.
    let s = te.stats();
    assert_eq!((s.encoded, s.memory_hits), (4, 2), "{s:?}");
    let off = text_encoder().with_memory_capacity(0);
    off.encode("a fox").unwrap();
    off.encode("a fox").unwrap();
    assert_eq!(off.stats().encoded, 2);
}

#[test]
fn disk_cache_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("t5-cache");
    let first = text_encoder().with_disk_cache(&cache).unwrap();
    let a = first.encode(PROMPT).unwrap();
    assert_eq!(first.stats().encoded, 1);
    let files: Vec<_> = std::fs::read_dir(&cache).unwrap().collect();
    assert_eq!(files.len(), 1, "one file per prompt, no temporary left");

    // A new encoder (another process) reads it back instead of encoding.
    let second = text_encoder().with_disk_cache(&cache).unwrap();
    let b = second.encode(PROMPT).unwrap();
    let s = second.stats();
    assert_eq!((s.encoded, s.disk_hits, s.disk_errors), (0, 1, 0), "{s:?}");
    assert_eq!(values(&a.context), values(&b.context));
    assert_eq!(b.context.dims(), a.context.dims());
    second.encode(PROMPT).unwrap();
    assert_eq!(second.stats().memory_hits, 1);

    // Another encoder identity does not see these files.
    let other = text_encoder()
        .with_identity("another encoder")
        .with_disk_cache(&cache)
        .unwrap();
    other.encode(PROMPT).unwrap();
    assert_eq!(other.stats().disk_hits, 0);

    // A damaged file is a miss, and is rewritten.
    for f in std::fs::read_dir(&cache).unwrap() {
        std::fs::write(f.unwrap().path(), b"not safetensors").unwrap();
    }
    let third = text_encoder().with_disk_cache(&cache).unwrap();
    let c = third.encode(PROMPT).unwrap();
    assert_eq!(third.stats().encoded, 1);
    assert_eq!(values(&c.context), values(&a.context));
    let fourth = text_encoder().with_disk_cache(&cache).unwrap();
    fourth.encode(PROMPT).unwrap();
    assert_eq!(fourth.stats().disk_hits, 1);
}

#[test]
fn disk_cache_needs_an_identity() {
    let dir = tempfile::tempdir().unwrap();
    let te = TextEncoder::new(tokenizer(), encoder()).unwrap();
    assert!(matches!(
        te.with_disk_cache(dir.path()),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn file_identity_follows_content_not_path() {
    let dir = tempfile::tempdir().unwrap();
    let src = umt5_dir().join("umt5_enc_f32.safetensors");
    let copy = dir.path().join("copy.safetensors");
    std::fs::copy(&src, &copy).unwrap();
    // The file name is hashed only inside folders; a renamed file keeps its identity.
    assert_eq!(file_identity(&src).unwrap(), file_identity(&copy).unwrap());
    let mut bytes = std::fs::read(&copy).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&copy, &bytes).unwrap();
    assert_ne!(file_identity(&src).unwrap(), file_identity(&copy).unwrap());
    assert!(file_identity(dir.path().join("missing")).is_err());
}

#[test]
fn batch_equals_single_and_forward_pads_with_zeros() {
    let t5 = encoder();
    let tok = tokenizer();
    let long = tok.tokenize(PROMPT).unwrap().ids;
    let short = tok.tokenize("a fox on a hill").unwrap().ids;
    assert!(short.len() < long.len());
    let batch = t5.encode(&[&long, &short]).unwrap();
    let alone = t5.encode(&[&short]).unwrap();
    let (b, a) = (values(&batch[1]), values(&alone[0]));
    let err = b
        .iter()
        .zip(&a)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(err < 1e-5, "padding changed the short prompt by {err}");

    let full = t5.forward(&[&long, &short]).unwrap();
    let (text_len, dim) = (t5.config().text_len, t5.config().dim);
    assert_eq!(full.dims(), [2, text_len, dim]);
    let f = values(&full);
    let row1 = &f[text_len * dim..];
    assert_eq!(&row1[..short.len() * dim], &b[..]);
    assert!(row1[short.len() * dim..].iter().all(|&x| x == 0.0));
    assert_eq!(&f[..long.len() * dim], &values(&batch[0])[..]);
}

#[test]
fn empty_prompt_is_eos_alone() {
    let te = text_encoder();
    for p in ["", "   \t\n "] {
        let e = te.encode(p).unwrap();
        assert_eq!(e.tokens.ids, [1]);
        assert_eq!(e.tokens.cleaned, "");
        assert!(!e.tokens.truncated);
        assert_eq!(e.context.dims(), [1, te.encoder().config().dim]);
        assert!(values(&e.context).iter().all(|x| x.is_finite()));
    }
}

#[test]
fn ten_thousand_words_are_truncated_with_the_flag() {
    let words = ["camera", "zoom", "beach", "lantern", "harbor"];
    let prompt: Vec<&str> = (0..10_000).map(|i| words[i % words.len()]).collect();
    let prompt = prompt.join(" ");
    let tok = tokenizer();
    let t = tok.tokenize(&prompt).unwrap();
    assert!(t.truncated);
    assert!(t.full_len > 10_000, "{}", t.full_len);
    assert_eq!(t.ids.len(), 512);
    assert_eq!(*t.ids.last().unwrap(), tok.eos_id());
    assert!(t.ids[..511].iter().all(|&id| id != tok.eos_id()));
    let padded = tok.padded_ids(&t);
    assert_eq!(padded, t.ids);

    let short = tok.tokenize("a fox").unwrap();
    assert!(!short.truncated);
    assert_eq!(short.full_len, short.ids.len());
    let padded = tok.padded_ids(&short);
    assert_eq!(padded.len(), 512);
    assert!(padded[short.ids.len()..]
        .iter()
        .all(|&id| id == tok.pad_id()));

    let te = text_encoder();
    let e = te.encode(&prompt).unwrap();
    assert!(e.tokens.truncated);
    assert_eq!(e.context.dims(), [512, te.encoder().config().dim]);

    let tight = tokenizer().with_text_len(4).unwrap();
    let t = tight.tokenize(PROMPT).unwrap();
    assert_eq!(t.ids.len(), 4);
    assert_eq!(t.ids[3], 1);
    assert!(tokenizer().with_text_len(0).is_err());
}

/// A `tokenizer.json` with the given `model` object.
fn tokenizer_json(model: &str) -> String {
    format!(
        r#"{{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
            "normalizer":null,"pre_tokenizer":null,"post_processor":null,"decoder":null,
            "model":{model}}}"#
    )
}

#[test]
fn non_unigram_tokenizers_are_rejected() {
    let models = [
        (
            "WordPiece",
            r###"{"type":"WordPiece","unk_token":"[UNK]","continuing_subword_prefix":"##",
                "max_input_chars_per_word":100,"vocab":{"[UNK]":0,"</s>":1,"<pad>":2,"a":3}}"###,
        ),
        (
            "BPE",
            r#"{"type":"BPE","dropout":null,"unk_token":null,"continuing_subword_prefix":null,
                "end_of_word_suffix":null,"fuse_unk":false,"byte_fallback":false,
                "vocab":{"a":0,"b":1,"ab":2,"</s>":3,"<pad>":4},"merges":["a b"]}"#,
        ),
        (
            "WordLevel",
            r#"{"type":"WordLevel","unk_token":"<unk>","vocab":{"<unk>":0,"</s>":1,"<pad>":2}}"#,
        ),
    ];
    for (kind, model) in models {
        let json = tokenizer_json(model);
        match Umt5Tokenizer::from_bytes(json.as_bytes(), "test.json") {
            Err(Error::UnsupportedModel(msg)) => {
                assert!(msg.contains(kind) && msg.contains("Unigram"), "{msg}")
            }
            other => panic!("{kind}: {other:?}"),
        }
    }
    let garbage = Umt5Tokenizer::from_bytes(b"{\"model\": 3}", "bad.json");
    assert!(matches!(garbage, Err(Error::BadFile { .. })), "{garbage:?}");
    assert!(matches!(
        Umt5Tokenizer::from_file(umt5_dir().join("missing.json")),
        Err(Error::Io { .. })
    ));
    // A Unigram model without T5's special tokens.
    let unigram =
        tokenizer_json(r#"{"type":"Unigram","unk_id":0,"vocab":[["<unk>",0.0],["a",-1.0]]}"#);
    assert!(matches!(
        Umt5Tokenizer::from_bytes(unigram.as_bytes(), "t.json"),
        Err(Error::UnsupportedModel(_))
    ));
}

#[test]
fn bad_ids_are_errors() {
    let t5 = encoder();
    let vocab = t5.config().vocab as u32;
    let text_len = t5.config().text_len;
    let cases: [(&str, Vec<Vec<u32>>); 4] = [
        ("id past the vocabulary", vec![vec![5, vocab, 1]]),
        ("empty prompt ids", vec![vec![]]),
        ("too many ids", vec![vec![5; text_len + 1]]),
        ("empty batch", vec![]),
    ];
    for (what, ids) in cases {
        let refs: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
        assert!(
            matches!(t5.encode(&refs), Err(Error::InvalidArgument(_))),
            "{what}"
        );
        assert!(t5.forward(&refs).is_err(), "{what}");
    }
    let te = text_encoder();
    assert!(te.encode_ids(&[vocab + 7, 1]).is_err());
    assert_eq!(te.stats().encoded, 0);
}

#[test]
fn mismatched_files_are_errors() {
    let d = umt5_dir();
    let dit = d.join("../tiny-dit/dit_f32.safetensors");
    assert!(matches!(
        Umt5Encoder::open(&dit, None),
        Err(Error::UnsupportedModel(_))
    ));
    // A config that disagrees with the weights.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.json");
    std::fs::write(&cfg, r#"{"num_layers": 5}"#).unwrap();
    assert!(matches!(
        Umt5Encoder::open(d.join("umt5_enc_f32.safetensors"), Some(&cfg)),
        Err(Error::InvalidConfig(_))
    ));
    // A tokenizer with more tokens than the encoder has embeddings.
    let ck = wanrt::io::open(d.join("umt5_enc_f32.safetensors")).unwrap();
    let (_, mut weights) = wanrt::io::layout::canonical_weights(&ck).unwrap();
    let metas = wanrt::io::layout::weight_metas(&weights);
    let mut cfg = wanrt::model::t5::T5Config::infer(&metas).unwrap();
    let small = weights["token_embedding.weight"]
        .tensor
        .narrow(0, 0, 100)
        .unwrap();
    weights.insert(
        "token_embedding.weight".into(),
        wanrt::tensor::Weight::new(small),
    );
    cfg.vocab = 100;
    let t5 = Umt5Encoder::new(weights.clone(), cfg.clone()).unwrap();
    assert!(matches!(
        TextEncoder::new(tokenizer(), t5),
        Err(Error::InvalidConfig(_))
    ));
    weights.remove("blocks.1.ffn.fc2.weight");
    assert!(matches!(
        Umt5Encoder::new(weights, cfg),
        Err(Error::MissingTensor { .. })
    ));
}

#[test]
fn pth_bf16_matches_f32_closely() {
    let d = umt5_dir();
    let bf16 =
        Umt5Encoder::open(d.join("umt5_enc_bf16.pth"), Some(&d.join("config.json"))).unwrap();
    let f32 = encoder();
    let ids = tokenizer().tokenize(PROMPT).unwrap().ids;
    let (a, b) = (
        values(&bf16.encode(&[&ids]).unwrap()[0]),
        values(&f32.encode(&[&ids]).unwrap()[0]),
    );
    let num: f32 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f32 = b.iter().map(|y| y * y).sum();
    let rel = (num / den).sqrt();
    // Different weights (bf16-rounded) give a different, nearby output.
    assert!(rel > 0.0 && rel < 0.05, "{rel}");
}

#[test]
fn text_encoder_is_shareable_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<TextEncoder>();
    let te = text_encoder();
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| te.encode(NEGATIVE).unwrap());
        }
    });
    let st = te.stats();
    assert_eq!(st.encoded + st.memory_hits, 2);
}

/// The encoder of `weights` (stored names → tensors) written to a safetensors file.
fn encoder_from(dir: &Path, name: &str, tensors: &[(String, Tensor)]) -> Umt5Encoder {
    let path = dir.join(name);
    let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    wanrt::io::safetensors::write_file(&path, &refs, &Default::default()).unwrap();
    Umt5Encoder::open(&path, Some(&umt5_dir().join("config.json")))
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn comfy_fp16_and_scaled_fp8_layouts() {
    use wanrt::DType;
    let hf = wanrt::io::open(umt5_dir().join("umt5_enc_hf_f32.safetensors")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ids = tokenizer().tokenize(PROMPT).unwrap().ids;
    let reference = values(&encoder().encode(&[&ids]).unwrap()[0]);

    // ComfyUI's prefix inside a merged checkpoint, in fp16.
    let comfy: Vec<(String, Tensor)> = hf
        .tensors
        .iter()
        .map(|(k, t)| {
            let name = format!("text_encoders.umt5xxl.transformer.{k}");
            (name, t.to_dtype(DType::F16).unwrap())
        })
        .collect();
    let fp16 = encoder_from(dir.path(), "comfy_fp16.safetensors", &comfy);
    let out = values(&fp16.encode(&[&ids]).unwrap()[0]);
    let err = rel_l2_f32(&out, &reference);
    assert!(err < 2e-3, "fp16: {err}");

    // ComfyUI scaled fp8: block linears as e4m3fn values times a per-tensor scale.
    let mut fp8 = Vec::new();
    for (k, t) in &hf.tensors {
        let linear = k.contains("SelfAttention.") && !k.contains("relative_attention_bias")
            || k.contains("DenseReluDense.");
        if !linear {
            fp8.push((k.clone(), t.to_dtype(DType::BF16).unwrap()));
            continue;
        }
        let v = values(t);
        let scale = v.iter().fold(0f32, |m, x| m.max(x.abs())) / 448.0;
        let q = Tensor::from_f32(v.iter().map(|x| x / scale).collect(), t.dims()).unwrap();
        fp8.push((k.clone(), q.to_dtype(DType::F8E4M3).unwrap()));
        let module = k.strip_suffix(".weight").unwrap();
        let s = Tensor::from_f32(vec![scale], [0usize; 0]).unwrap();
        fp8.push((format!("{module}.scale_weight"), s));
    }
    let marker = Tensor::zeros([0], DType::F8E4M3);
    fp8.push(("scaled_fp8".into(), marker));
    let scaled = encoder_from(dir.path(), "fp8_scaled.safetensors", &fp8);
    let out = values(&scaled.encode(&[&ids]).unwrap()[0]);
    let err = rel_l2_f32(&out, &reference);
    assert!(err > 0.0 && err < 0.1, "scaled fp8: {err}");
}
