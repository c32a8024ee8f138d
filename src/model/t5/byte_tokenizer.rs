//! A tokenizer that needs no file: every text becomes its UTF-8 bytes, one token each, for
//! models with random weights (the demo, benchmarks).

use tokenizers::models::unigram::Unigram;
use tokenizers::pre_tokenizers::metaspace::Metaspace;
use tokenizers::Tokenizer;

use super::Umt5Tokenizer;
use crate::error::{Error, Result};

impl Umt5Tokenizer {
    /// A sentencepiece-style Unigram tokenizer (the format of google/umt5-xxl's
    /// `tokenizer.json`) whose vocabulary is only `<pad>`, `</s>`, `<unk>` and the 256 byte
    /// pieces `<0x00>`..`<0xFF>`: with byte fallback a text becomes its UTF-8 bytes (after the
    /// Metaspace pre-tokenizer's `▁`), one token each, then `</s>`.
    pub fn byte_level() -> Result<Umt5Tokenizer> {
        let mut vocab: Vec<(String, f64)> = ["<pad>", "</s>", "<unk>"]
            .iter()
            .map(|t| (t.to_string(), 0.0))
            .collect();
        vocab.extend((0..=255u8).map(|b| (format!("<0x{b:02X}>"), -1.0)));
        let err = |e: tokenizers::Error| Error::InvalidArgument(format!("byte tokenizer: {e}"));
        let model = Unigram::from(vocab, Some(2), true).map_err(err)?;
        let mut tok = Tokenizer::new(model);
        tok.with_pre_tokenizer(Some(Metaspace::default()));
        let json = tok.to_string(false).map_err(err)?;
        Umt5Tokenizer::from_bytes(json.as_bytes(), "<byte tokenizer>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_encodes_utf8_bytes() {
        let tok = Umt5Tokenizer::byte_level().unwrap();
        assert_eq!(tok.vocab_size(), 259);
        let t = tok.tokenize("ab é").unwrap();
        // Metaspace turns the text into "▁ab▁é" (▁ is 3 bytes): 3 + 2 + 3 + 2 bytes, then </s>.
        assert_eq!(t.ids.len(), 11, "{:?}", t.ids);
        assert_eq!(*t.ids.last().unwrap(), tok.eos_id());
        assert!(t.ids.iter().all(|&i| (i as usize) < tok.vocab_size()));
    }
}
