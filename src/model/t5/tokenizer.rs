//! The UMT5 tokenizer: a `tokenizer.json` in the google/umt5-xxl format (a sentencepiece
//! Unigram model) read by the pure-Rust `tokenizers` crate, used as Wan calls it
//! (wan-architecture.md §3.3): cleaned prompt, `</s>` appended, at most `text_len` tokens.
//!
//! The crate trusts its file: its sentencepiece normalizer is checked first
//! ([`super::charsmap`]), and any panic of the crate that remains, while loading or while
//! tokenizing, becomes an [`Error::BadFile`] naming the file.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};

use tokenizers::models::ModelWrapper;
use tokenizers::Tokenizer;

use super::clean::clean_prompt;
use crate::error::{panic_message, Error, Result};
use crate::io::input::{read_capped, TOKENIZER_LIMIT};

/// A prompt as the encoder takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokenized {
    /// The prompt after Wan's cleaning ([`super::clean_prompt`]).
    pub cleaned: String,
    /// Token ids, unpadded, `</s>` last: 1 to `text_len` of them.
    pub ids: Vec<u32>,
    /// Whether tokens were dropped to fit `text_len` (the prompt's end is lost; upstream
    /// truncates the same way and only logs a warning).
    pub truncated: bool,
    /// How many tokens, `</s>` included, the prompt had before truncation.
    pub full_len: usize,
}

/// Tokenizes prompts for the UMT5 encoder.
#[derive(Clone)]
pub struct Umt5Tokenizer {
    inner: Tokenizer,
    source: PathBuf,
    eos: u32,
    pad: u32,
    text_len: usize,
}

impl std::fmt::Debug for Umt5Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Umt5Tokenizer")
            .field("source", &self.source)
            .field("vocab", &self.vocab_size())
            .field("eos", &self.eos)
            .field("pad", &self.pad)
            .field("text_len", &self.text_len)
            .finish()
    }
}

impl Umt5Tokenizer {
    /// Reads a `tokenizer.json` (no network access). Fails with [`Error::BadFile`] when it is
    /// not a regular file of at most [`TOKENIZER_LIMIT`] bytes, does not parse or holds a
    /// damaged normalizer, and [`Error::UnsupportedModel`] when its model is not Unigram (the
    /// sentencepiece model of google/umt5-xxl) or it lacks the `</s>` and `<pad>` tokens.
    /// `text_len` starts at 512.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Umt5Tokenizer> {
        let path = path.as_ref();
        let bytes = read_capped(path, TOKENIZER_LIMIT, "tokenizer.json")?;
        Umt5Tokenizer::from_bytes(&bytes, path)
    }

    /// Reads the text of a `tokenizer.json`; `source` names it in errors.
    pub fn from_bytes(json: &[u8], source: impl Into<PathBuf>) -> Result<Umt5Tokenizer> {
        let source = source.into();
        super::charsmap::check_normalizers(json).map_err(|e| Error::bad_file(&source, e))?;
        let mut inner = contained(&source, "loading it", || Tokenizer::from_bytes(json))?
            .map_err(|e| Error::bad_file(&source, format!("not a tokenizer.json: {e}")))?;
        let kind = match inner.get_model() {
            ModelWrapper::Unigram(_) => None,
            ModelWrapper::BPE(_) => Some("BPE"),
            ModelWrapper::WordPiece(_) => Some("WordPiece"),
            ModelWrapper::WordLevel(_) => Some("WordLevel"),
        };
        if let Some(kind) = kind {
            return Err(Error::UnsupportedModel(format!(
                "{}: a {kind} tokenizer; UMT5 needs the Unigram (sentencepiece) tokenizer.json \
                 of google/umt5-xxl",
                source.display()
            )));
        }
        let special = |token: &str| {
            inner.token_to_id(token).ok_or_else(|| {
                Error::UnsupportedModel(format!(
                    "{}: no `{token}` token; not a T5 tokenizer",
                    source.display()
                ))
            })
        };
        let (eos, pad) = (special("</s>")?, special("<pad>")?);
        // Lengths are handled here, not by whatever the file configures.
        inner
            .with_truncation(None)
            .map_err(|e| Error::bad_file(&source, e.to_string()))?;
        inner.with_padding(None);
        Ok(Umt5Tokenizer {
            inner,
            source,
            eos,
            pad,
            text_len: 512,
        })
    }

    /// The same tokenizer with another maximum length (1 or more, `</s>` included).
    pub fn with_text_len(mut self, text_len: usize) -> Result<Umt5Tokenizer> {
        if text_len == 0 {
            return Err(Error::InvalidArgument(
                "tokenizer: text_len must be at least 1 (room for </s>)".into(),
            ));
        }
        self.text_len = text_len;
        Ok(self)
    }

    /// The maximum number of tokens of a prompt, `</s>` included.
    pub fn text_len(&self) -> usize {
        self.text_len
    }

    /// The vocabulary size, added tokens included: every id is below it.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of `</s>` (1 for UMT5).
    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    /// The id of `<pad>` (0 for UMT5).
    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    /// Cleans `prompt` as Wan does, then tokenizes it ([`Umt5Tokenizer::encode_cleaned`]).
    ///
    /// An empty (or all-whitespace) prompt encodes to `</s>` alone, as upstream's does.
    pub fn tokenize(&self, prompt: &str) -> Result<Tokenized> {
        self.encode_cleaned(clean_prompt(prompt))
    }

    /// Tokenizes already-cleaned text: the tokenizer's pieces, then `</s>`. A text of more
    /// than `text_len - 1` pieces keeps its first `text_len - 1` and `</s>`, with
    /// [`Tokenized::truncated`] set, as transformers' `truncation=True` does. The file's
    /// post-processor is not run: UMT5's is `$A </s>`, which this reproduces, and a file
    /// without one still gets its `</s>`.
    pub fn encode_cleaned(&self, cleaned: impl Into<String>) -> Result<Tokenized> {
        let cleaned = cleaned.into();
        let enc = contained(&self.source, "tokenizing a prompt", || {
            self.inner.encode(cleaned.as_str(), false)
        })?
        .map_err(|e| Error::InvalidArgument(format!("tokenizer: {e}")))?;
        let mut ids = enc.get_ids().to_vec();
        let full_len = ids.len() + 1;
        let truncated = full_len > self.text_len;
        ids.truncate(self.text_len - 1);
        ids.push(self.eos);
        Ok(Tokenized {
            cleaned,
            ids,
            truncated,
            full_len,
        })
    }

    /// `t`'s ids padded with `<pad>` to `text_len`, as upstream feeds its encoder.
    pub fn padded_ids(&self, t: &Tokenized) -> Vec<u32> {
        let mut ids = t.ids.clone();
        ids.resize(self.text_len.max(ids.len()), self.pad);
        ids
    }
}

/// Runs `f`, a call into the `tokenizers` crate, turning a panic into an [`Error::BadFile`]
/// for `source` (the crate panics on files it cannot handle).
fn contained<T>(source: &Path, doing: &str, f: impl FnOnce() -> T) -> Result<T> {
    std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(|panic| {
        let msg = panic_message(panic.as_ref()).unwrap_or("no message");
        Error::bad_file(
            source,
            format!("the tokenizer failed while {doing} (damaged file?): {msg}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_of_the_crate_become_bad_file_errors() {
        let source = Path::new("models/tokenizer.json");
        assert_eq!(contained(source, "loading it", || 7).unwrap(), 7);
        let e = contained(source, "tokenizing a prompt", || -> u32 {
            panic!("index out of bounds")
        })
        .unwrap_err();
        assert_eq!(e.status(), crate::error::Status::BadFile);
        assert_eq!(
            e.to_string(),
            "models/tokenizer.json: the tokenizer failed while tokenizing a prompt (damaged \
             file?): index out of bounds"
        );
    }
}
