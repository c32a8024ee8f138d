//! Checks a `tokenizer.json`'s sentencepiece normalizer before the `tokenizers` crate sees it.
//!
//! A `Precompiled` normalizer carries a `precompiled_charsmap`: base64 of `u32 LE trie size in
//! bytes | trie (u32 LE units of a Darts double array) | normalized strings (UTF-8, each ended
//! by a NUL)`. The crate trusts all of it: a damaged charsmap makes it panic while loading, a
//! trie size near 2^31 makes it allocate until the process aborts, and a trie whose offsets
//! point outside it panics later, while a prompt is tokenized. [`check_normalizers`] decodes
//! every charsmap itself and walks every trie path the crate can follow, so whatever passes
//! here is safe to hand over.

use std::collections::HashSet;

use base64::Engine;
use serde::Deserialize;
use serde_json::Value;

/// The longest key the crate looks up in the trie: a grapheme of fewer than 6 bytes (longer
/// ones are looked up a character, at most 4 bytes, at a time).
const MAX_KEY: usize = 5;

/// The part of a `tokenizer.json` that holds normalizers.
#[derive(Deserialize)]
struct Normalizer {
    #[serde(default)]
    normalizer: Value,
}

/// Checks every `Precompiled` normalizer of the `tokenizer.json` text `json` (at any depth of
/// `Sequence`s); the error says what is wrong, in one line.
pub(super) fn check_normalizers(json: &[u8]) -> Result<(), String> {
    let top: Normalizer =
        serde_json::from_slice(json).map_err(|e| format!("not a tokenizer.json: {e}"))?;
    check_value(&top.normalizer)
}

/// Walks a normalizer tree; any object that is, or looks like, a `Precompiled` one is checked.
fn check_value(v: &Value) -> Result<(), String> {
    match v {
        Value::Object(m) => {
            let precompiled = m.get("type").and_then(Value::as_str) == Some("Precompiled");
            if precompiled || m.contains_key("precompiled_charsmap") {
                let bytes = match m.get("precompiled_charsmap") {
                    Some(Value::String(s)) => {
                        base64::engine::general_purpose::STANDARD
                            .decode(s)
                            .map_err(|e| format!("precompiled_charsmap is not valid base64: {e}"))?
                    }
                    Some(other) => {
                        return Err(format!(
                            "precompiled_charsmap is {}, expected a base64 string",
                            kind(other)
                        ))
                    }
                    None => {
                        return Err("a Precompiled normalizer without a precompiled_charsmap".into())
                    }
                };
                check_charsmap(&bytes).map_err(|e| format!("precompiled_charsmap: {e}"))?;
            }
            m.values().try_for_each(check_value)
        }
        Value::Array(items) => items.iter().try_for_each(check_value),
        _ => Ok(()),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Checks a decoded charsmap: the declared trie size against the bytes that follow it, the
/// strings' encoding, and every unit the trie lookup of a key of up to [`MAX_KEY`] bytes can
/// read, with every value it can return.
pub(super) fn check_charsmap(bytes: &[u8]) -> Result<(), String> {
    let Some((size, rest)) = bytes.split_first_chunk::<4>() else {
        return Err(format!(
            "{} bytes, too short for its 4-byte trie size",
            bytes.len()
        ));
    };
    let trie_bytes = u32::from_le_bytes(*size) as usize;
    if trie_bytes == 0 || !trie_bytes.is_multiple_of(4) || trie_bytes > rest.len() {
        return Err(format!(
            "declares a trie of {trie_bytes} bytes, but a trie is a nonzero multiple of 4 bytes \
             and only {} bytes follow the size",
            rest.len()
        ));
    }
    let (trie, strings) = rest.split_at(trie_bytes);
    let units: Vec<u32> = trie
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let strings = std::str::from_utf8(strings)
        .map_err(|e| format!("the normalized strings are not UTF-8: {e}"))?;
    check_trie(&units, strings)
}

/// Follows the lookup of `spm_precompiled`'s `DoubleArray::common_prefix_search` from the root
/// over every byte (1 to 255) at each of [`MAX_KEY`] steps, breadth first: every unit it reads
/// must be inside the trie and every value it returns must start a string in `strings`.
fn check_trie(units: &[u32], strings: &str) -> Result<(), String> {
    let n = units.len();
    let unit = |i: usize| units.get(i).map(|&u| u as usize);
    let offset = |u: usize| (u >> 10) << ((u & (1 << 9)) >> 6);
    let label = |u: usize| u & ((1 << 31) | 0xFF);
    let has_leaf = |u: usize| (u >> 8) & 1 == 1;
    let value = |u: usize| u & ((1 << 31) - 1);

    let root = unit(0).ok_or("empty trie")?;
    let mut frontier = vec![offset(root)];
    let mut seen: HashSet<usize> = frontier.iter().copied().collect();
    for _ in 0..MAX_KEY {
        let mut next = Vec::new();
        for &base in &frontier {
            // The lookup reads unit `base ^ c` for the next byte `c` of the key.
            if base | 0xFF >= n {
                return Err(format!(
                    "a trie node's children (units {}..={}) run past the trie's {n} units",
                    base & !0xFF,
                    base | 0xFF
                ));
            }
            for c in 1..=0xFF {
                let at = base ^ c;
                let u = units[at] as usize;
                if label(u) != c {
                    continue;
                }
                let child = at ^ offset(u);
                if has_leaf(u) {
                    let v = unit(child).ok_or_else(|| {
                        format!("trie unit {at} has its value at unit {child}, past the trie's {n} units")
                    })?;
                    let start = value(v);
                    if !strings.is_char_boundary(start) {
                        return Err(format!(
                            "trie unit {child} points at byte {start} of the {}-byte normalized \
                             strings, which starts no string",
                            strings.len()
                        ));
                    }
                }
                if seen.insert(child) {
                    next.push(child);
                }
            }
        }
        frontier = next;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A charsmap from trie units and strings.
    fn charsmap(units: &[u32], strings: &str) -> Vec<u8> {
        let mut b = ((units.len() * 4) as u32).to_le_bytes().to_vec();
        units.iter().for_each(|u| b.extend(u.to_le_bytes()));
        b.extend(strings.as_bytes());
        b
    }

    /// A trie of 512 units mapping the key `a` to string `start`: the root's children sit at
    /// base 256, `a`'s value at unit 256 ^ 97 ^ 1 (its offset 1).
    fn one_key(start: u32) -> Vec<u32> {
        let mut units = vec![0u32; 512];
        units[0] = 256 << 10;
        let a = 256 ^ 97;
        units[a] = (1 << 10) | (1 << 8) | 97;
        units[a ^ 1] = start;
        units
    }

    #[test]
    fn sizes_offsets_and_values_are_checked() {
        assert_eq!(check_charsmap(&charsmap(&one_key(0), "b\0")), Ok(()));
        // The real crate agrees: it maps `a` to `b`.
        let p = spm_check(&charsmap(&one_key(0), "b\0"));
        assert_eq!(p.as_deref(), Some("b"));

        let err = |b: &[u8]| check_charsmap(b).unwrap_err();
        assert!(err(&[1, 0]).contains("too short"));
        let mut giant = charsmap(&one_key(0), "b\0");
        giant[..4].copy_from_slice(&0x7FFF_FFFCu32.to_le_bytes());
        assert!(err(&giant).contains("declares a trie of 2147483644 bytes"));
        assert!(err(&charsmap(&[], "")).contains("declares a trie of 0 bytes"));
        // A value inside a multi-byte character, or past the strings.
        assert!(err(&charsmap(&one_key(1), "é\0")).contains("starts no string"));
        assert!(err(&charsmap(&one_key(9), "b\0")).contains("byte 9"));
        // Children past the end: the same trie cut to 300 units.
        assert!(err(&charsmap(&one_key(0)[..300], "b\0")).contains("run past"));
        // A value unit past the end: `a`'s offset sends it to unit 256 ^ 97 ^ 4096.
        let mut far = one_key(0);
        far[256 ^ 97] = (4096 << 10) | (1 << 8) | 97;
        assert!(err(&charsmap(&far, "b\0")).contains("past the trie's 512 units"));
        assert!(err(&[4, 0, 0, 0, 0, 0, 0, 0, 0xff]).contains("not UTF-8"));
    }

    #[test]
    fn normalizer_types_are_checked() {
        let check = |normalizer: &str| {
            check_normalizers(format!(r#"{{"normalizer":{normalizer}}}"#).as_bytes())
        };
        assert_eq!(check("null"), Ok(()));
        assert_eq!(check(r#"{"type":"NFKC"}"#), Ok(()));
        let nested = |charsmap: &str| {
            format!(
                r#"{{"type":"Sequence","normalizers":[{{"type":"Precompiled","precompiled_charsmap":{charsmap}}}]}}"#
            )
        };
        let good = base64::engine::general_purpose::STANDARD.encode(charsmap(&one_key(0), "b\0"));
        assert_eq!(check(&nested(&format!("\"{good}\""))), Ok(()));
        for (charsmap, message) in [
            ("7", "is a number"),
            ("[1]", "is an array"),
            ("null", "is null"),
            ("\"not base64!\"", "not valid base64"),
            ("\"AAAAAA==\"", "declares a trie of 0 bytes"),
        ] {
            let e = check(&nested(charsmap)).unwrap_err();
            assert!(e.contains(message), "{charsmap}: {e}");
        }
        let e = check(r#"{"type":"Precompiled"}"#).unwrap_err();
        assert!(e.contains("without a precompiled_charsmap"), "{e}");
        assert!(check_normalizers(b"[")
            .unwrap_err()
            .contains("not a tokenizer.json"));
    }

    /// What the `tokenizers` crate's own normalizer makes of `a` with this charsmap.
    fn spm_check(bytes: &[u8]) -> Option<String> {
        use tokenizers::normalizers::Precompiled;
        let p = Precompiled::from(bytes).ok()?;
        p.transform("a").map(str::to_string)
    }
}
