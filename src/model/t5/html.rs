//! HTML character references, decoded as Python's `html.unescape` does (Wan unescapes every
//! prompt twice) and as ftfy's stricter `unescape_html` fixer does.
//!
//! Numeric references follow Python exactly (including its Windows-1252 repair of `&#128;` to
//! `&#159;` and the code points it drops). Named references cover the HTML 4 set (every
//! Latin-1 entity, the Greek letters, typographic punctuation, arrows and maths symbols) and
//! `&apos;`; HTML5 added about 2,000 rarer names, which are left as they are.

use std::collections::HashMap;
use std::sync::OnceLock;

/// Names of U+00A0..=U+00FF, in order. All are "legacy" entities, also recognised without `;`.
const LATIN1: [&str; 96] = [
    "nbsp", "iexcl", "cent", "pound", "curren", "yen", "brvbar", "sect", "uml", "copy", "ordf",
    "laquo", "not", "shy", "reg", "macr", "deg", "plusmn", "sup2", "sup3", "acute", "micro",
    "para", "middot", "cedil", "sup1", "ordm", "raquo", "frac14", "frac12", "frac34", "iquest",
    "Agrave", "Aacute", "Acirc", "Atilde", "Auml", "Aring", "AElig", "Ccedil", "Egrave", "Eacute",
    "Ecirc", "Euml", "Igrave", "Iacute", "Icirc", "Iuml", "ETH", "Ntilde", "Ograve", "Oacute",
    "Ocirc", "Otilde", "Ouml", "times", "Oslash", "Ugrave", "Uacute", "Ucirc", "Uuml", "Yacute",
    "THORN", "szlig", "agrave", "aacute", "acirc", "atilde", "auml", "aring", "aelig", "ccedil",
    "egrave", "eacute", "ecirc", "euml", "igrave", "iacute", "icirc", "iuml", "eth", "ntilde",
    "ograve", "oacute", "ocirc", "otilde", "ouml", "divide", "oslash", "ugrave", "uacute", "ucirc",
    "uuml", "yacute", "thorn", "yuml",
];

/// Legacy entities outside Latin-1 (recognised without `;` too).
const LEGACY: [(&str, char); 10] = [
    ("amp", '&'),
    ("lt", '<'),
    ("gt", '>'),
    ("quot", '"'),
    ("AMP", '&'),
    ("LT", '<'),
    ("GT", '>'),
    ("QUOT", '"'),
    ("COPY", '©'),
    ("REG", '®'),
];

/// Entities that need their `;`: the rest of HTML 4 (HTML5 code points), and `apos`.
const NAMED: &[(&str, u32)] = &[
    ("apos", 0x27),
    ("OElig", 0x152),
    ("oelig", 0x153),
    ("Scaron", 0x160),
    ("scaron", 0x161),
    ("Yuml", 0x178),
    ("fnof", 0x192),
    ("circ", 0x2C6),
    ("tilde", 0x2DC),
    ("Alpha", 0x391),
    ("Beta", 0x392),
    ("Gamma", 0x393),
    ("Delta", 0x394),
    ("Epsilon", 0x395),
    ("Zeta", 0x396),
    ("Eta", 0x397),
    ("Theta", 0x398),
    ("Iota", 0x399),
    ("Kappa", 0x39A),
    ("Lambda", 0x39B),
    ("Mu", 0x39C),
    ("Nu", 0x39D),
    ("Xi", 0x39E),
    ("Omicron", 0x39F),
    ("Pi", 0x3A0),
    ("Rho", 0x3A1),
    ("Sigma", 0x3A3),
    ("Tau", 0x3A4),
    ("Upsilon", 0x3A5),
    ("Phi", 0x3A6),
    ("Chi", 0x3A7),
    ("Psi", 0x3A8),
    ("Omega", 0x3A9),
    ("alpha", 0x3B1),
    ("beta", 0x3B2),
    ("gamma", 0x3B3),
    ("delta", 0x3B4),
    ("epsilon", 0x3B5),
    ("zeta", 0x3B6),
    ("eta", 0x3B7),
    ("theta", 0x3B8),
    ("iota", 0x3B9),
    ("kappa", 0x3BA),
    ("lambda", 0x3BB),
    ("mu", 0x3BC),
    ("nu", 0x3BD),
    ("xi", 0x3BE),
    ("omicron", 0x3BF),
    ("pi", 0x3C0),
    ("rho", 0x3C1),
    ("sigmaf", 0x3C2),
    ("sigma", 0x3C3),
    ("tau", 0x3C4),
    ("upsilon", 0x3C5),
    ("phi", 0x3C6),
    ("chi", 0x3C7),
    ("psi", 0x3C8),
    ("omega", 0x3C9),
    ("thetasym", 0x3D1),
    ("upsih", 0x3D2),
    ("piv", 0x3D6),
    ("ensp", 0x2002),
    ("emsp", 0x2003),
    ("thinsp", 0x2009),
    ("zwnj", 0x200C),
    ("zwj", 0x200D),
    ("lrm", 0x200E),
    ("rlm", 0x200F),
    ("ndash", 0x2013),
    ("mdash", 0x2014),
    ("lsquo", 0x2018),
    ("rsquo", 0x2019),
    ("sbquo", 0x201A),
    ("ldquo", 0x201C),
    ("rdquo", 0x201D),
    ("bdquo", 0x201E),
    ("dagger", 0x2020),
    ("Dagger", 0x2021),
    ("bull", 0x2022),
    ("hellip", 0x2026),
    ("permil", 0x2030),
    ("prime", 0x2032),
    ("Prime", 0x2033),
    ("lsaquo", 0x2039),
    ("rsaquo", 0x203A),
    ("oline", 0x203E),
    ("frasl", 0x2044),
    ("euro", 0x20AC),
    ("image", 0x2111),
    ("weierp", 0x2118),
    ("real", 0x211C),
    ("trade", 0x2122),
    ("alefsym", 0x2135),
    ("larr", 0x2190),
    ("uarr", 0x2191),
    ("rarr", 0x2192),
    ("darr", 0x2193),
    ("harr", 0x2194),
    ("crarr", 0x21B5),
    ("lArr", 0x21D0),
    ("uArr", 0x21D1),
    ("rArr", 0x21D2),
    ("dArr", 0x21D3),
    ("hArr", 0x21D4),
    ("forall", 0x2200),
    ("part", 0x2202),
    ("exist", 0x2203),
    ("empty", 0x2205),
    ("nabla", 0x2207),
    ("isin", 0x2208),
    ("notin", 0x2209),
    ("ni", 0x220B),
    ("prod", 0x220F),
    ("sum", 0x2211),
    ("minus", 0x2212),
    ("lowast", 0x2217),
    ("radic", 0x221A),
    ("prop", 0x221D),
    ("infin", 0x221E),
    ("ang", 0x2220),
    ("and", 0x2227),
    ("or", 0x2228),
    ("cap", 0x2229),
    ("cup", 0x222A),
    ("int", 0x222B),
    ("there4", 0x2234),
    ("sim", 0x223C),
    ("cong", 0x2245),
    ("asymp", 0x2248),
    ("ne", 0x2260),
    ("equiv", 0x2261),
    ("le", 0x2264),
    ("ge", 0x2265),
    ("sub", 0x2282),
    ("sup", 0x2283),
    ("nsub", 0x2284),
    ("sube", 0x2286),
    ("supe", 0x2287),
    ("oplus", 0x2295),
    ("otimes", 0x2297),
    ("perp", 0x22A5),
    ("sdot", 0x22C5),
    ("lceil", 0x2308),
    ("rceil", 0x2309),
    ("lfloor", 0x230A),
    ("rfloor", 0x230B),
    ("lang", 0x27E8),
    ("rang", 0x27E9),
    ("loz", 0x25CA),
    ("spades", 0x2660),
    ("clubs", 0x2663),
    ("hearts", 0x2665),
    ("diams", 0x2666),
];

/// Windows-1252 for the bytes 0x80..=0x9F, where it differs from Latin-1: Python's
/// `_invalid_charrefs` and ftfy's C1-control repair both use it (undefined bytes map to
/// themselves).
pub(super) const CP1252_C1: [char; 32] = [
    '€', '\u{81}', '‚', 'ƒ', '„', '…', '†', '‡', 'ˆ', '‰', 'Š', '‹', 'Œ', '\u{8d}', 'Ž', '\u{8f}',
    '\u{90}', '‘', '’', '“', '”', '•', '–', '—', '˜', '™', 'š', '›', 'œ', '\u{9d}', 'ž', 'Ÿ',
];

struct Tables {
    /// Every known entity name (without `;`).
    full: HashMap<&'static str, char>,
    /// The names also recognised without `;`.
    legacy: HashMap<&'static str, char>,
}

fn tables() -> &'static Tables {
    static T: OnceLock<Tables> = OnceLock::new();
    T.get_or_init(|| {
        let latin1 = LATIN1
            .iter()
            .zip(0xA0u32..)
            .map(|(&n, c)| (n, char::from_u32(c).expect("Latin-1")));
        let legacy: HashMap<&'static str, char> = latin1.chain(LEGACY).collect();
        let mut full = legacy.clone();
        full.extend(
            NAMED
                .iter()
                .map(|&(n, c)| (n, char::from_u32(c).expect("entity table"))),
        );
        Tables { full, legacy }
    })
}

/// Python's `html.unescape`: replaces `&name;`, `&#digits;` and `&#xhex;` references (the `;`
/// optional where HTML allows it) by the characters they stand for.
pub fn html_unescape(s: &str) -> String {
    replace_references(s, python_charref)
}

/// `s` with every `&` for which `reference` (given the text after the `&`) returns the
/// replacement and the bytes it consumes replaced so; other `&`s stay.
fn replace_references(s: &str, reference: impl Fn(&str) -> Option<(String, usize)>) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        let tail = &rest[at + 1..];
        match reference(tail) {
            Some((text, used)) => {
                out.push_str(&text);
                rest = &tail[used..];
            }
            None => {
                out.push('&');
                rest = tail;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The reference at the start of `t` (the text after an `&`), as Python's `_charref` pattern
/// matches it: the replacement and the bytes consumed, or `None` when nothing matches.
fn python_charref(t: &str) -> Option<(String, usize)> {
    if let Some(num) = t.strip_prefix('#') {
        let (hex, digits_at) = match num.as_bytes().first() {
            Some(b'x' | b'X') => (true, 2),
            _ => (false, 1),
        };
        let digits = t[digits_at..]
            .bytes()
            .take_while(|b| {
                if hex {
                    b.is_ascii_hexdigit()
                } else {
                    b.is_ascii_digit()
                }
            })
            .count();
        if digits == 0 {
            return None;
        }
        let end = digits_at + digits;
        let used = end + usize::from(t[end..].starts_with(';'));
        let radix = if hex { 16 } else { 10 };
        // Saturates: anything past u32 is out of Unicode's range anyway.
        let value = t[digits_at..end].chars().fold(0u64, |v, c| {
            (v * radix + c.to_digit(radix as u32).expect("digit") as u64).min(u64::from(u32::MAX))
        });
        return Some((numeric_ref(value), used));
    }
    let name_len: usize = t
        .chars()
        .take_while(|c| !matches!(c, '\t' | '\n' | '\x0c' | ' ' | '<' | '&' | '#' | ';'))
        .take(32)
        .map(char::len_utf8)
        .sum();
    if name_len == 0 {
        return None;
    }
    let name = &t[..name_len];
    let semi = t[name_len..].starts_with(';');
    let used = name_len + usize::from(semi);
    let tb = tables();
    let exact = if semi {
        tb.full.get(name)
    } else {
        tb.legacy.get(name)
    };
    if let Some(&c) = exact {
        return Some((c.to_string(), used));
    }
    // The longest legacy name that prefixes it (`&ampfoo` is `&foo`), at least 2 characters.
    let cuts = name.char_indices().map(|(i, _)| i).filter(|&i| i >= 2);
    for cut in cuts.collect::<Vec<_>>().into_iter().rev() {
        if let Some(&c) = tb.legacy.get(&name[..cut]) {
            return Some((format!("{c}{}", &t[cut..used]), used));
        }
    }
    Some((format!("&{}", &t[..used]), used))
}

/// A numeric reference as Python decodes it.
fn numeric_ref(n: u64) -> String {
    match n {
        0 => '\u{FFFD}'.to_string(),
        0x0D => '\r'.to_string(),
        0x80..=0x9F => CP1252_C1[(n - 0x80) as usize].to_string(),
        0xD800..=0xDFFF => '\u{FFFD}'.to_string(),
        n if n > 0x10FFFF => '\u{FFFD}'.to_string(),
        0x01..=0x08 | 0x0B | 0x0E..=0x1F | 0x7F | 0xFDD0..=0xFDEF => String::new(),
        n if n & 0xFFFE == 0xFFFE => String::new(),
        n => char::from_u32(n as u32)
            .map(String::from)
            .unwrap_or_default(),
    }
}

/// ftfy's `unescape_html` fixer: only complete references `&name;`, `&#digits;`, `&#xhex;`
/// (1 to 24 ASCII letters or digits, then `;`) are decoded, and an upper-cased entity name
/// (`&EACUTE;`) also decodes, to the upper-cased character, when it is not itself a name.
pub(super) fn ftfy_unescape(s: &str) -> String {
    replace_references(s, ftfy_reference)
}

/// A complete reference at the start of `t` (the text after an `&`) as ftfy's fixer reads it:
/// its decoded text (the reference itself where ftfy does not decode it) and its length.
fn ftfy_reference(t: &str) -> Option<(String, usize)> {
    let numeric = t.starts_with('#');
    let body = &t[usize::from(numeric)..];
    let n = body.bytes().take_while(u8::is_ascii_alphanumeric).count();
    if !(1..=24).contains(&n) || !body[n..].starts_with(';') {
        return None;
    }
    let used = usize::from(numeric) + n + 1;
    let whole = format!("&{}", &t[..used]);
    let decoded = if numeric {
        let d = html_unescape(&whole);
        (!d.contains(';')).then_some(d)
    } else {
        ftfy_named(&body[..n])
    };
    Some((decoded.unwrap_or(whole), used))
}

/// A named entity as ftfy's table holds it (`name` without `&` and `;`).
fn ftfy_named(name: &str) -> Option<String> {
    let tb = tables();
    if let Some(&c) = tb.full.get(name) {
        return Some(c.to_string());
    }
    let lower = name.to_lowercase();
    let upper_variant = name == name.to_uppercase() && lower.to_uppercase() == name;
    let c = *tb.full.get(lower.as_str())?;
    // ftfy adds `&NAME;` only when Python's unescape leaves it alone (no legacy prefix).
    let itself = format!("&{name};");
    (upper_variant && html_unescape(&itself) == itself).then(|| c.to_uppercase().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_unescape_cases() {
        // Expected values as CPython 3.11 `html.unescape` returns them.
        let cases = [
            ("harbor &amp; lanterns", "harbor & lanterns"),
            ("&lt;bad&gt;", "<bad>"),
            ("&amp;amp;", "&amp;"),
            ("a &amp b", "a & b"),
            ("&ampfoo;", "&foo;"),
            ("&notit;", "¬it;"),
            ("&hellip; &hellip", "… &hellip"),
            ("&#65;&#x42;&#X43", "ABC"),
            ("&#128;&#150;", "€–"),
            ("&#0;&#xD800;&#1114112;", "\u{FFFD}\u{FFFD}\u{FFFD}"),
            ("&#1;&#xFFFF;x", "x"),
            ("&#x;&#;&", "&#x;&#;&"),
            ("&nbsp;&eacute;&EACUTE;", "\u{a0}é&EACUTE;"),
            ("&quot;&apos;&#39;", "\"''"),
            ("&Sigma;&sigmaf;&rArr;&lang;", "Σς⇒⟨"),
            ("&unknownname; & ;", "&unknownname; & ;"),
        ];
        for (input, want) in cases {
            assert_eq!(html_unescape(input), want, "{input:?}");
        }
    }

    #[test]
    fn ftfy_unescape_cases() {
        let cases = [
            ("&amp;", "&"),
            ("a &amp b", "a &amp b"),
            ("&EACUTE;&NTILDE;&HELLIP;", "ÉÑ…"),
            ("&COPYSR;", "&COPYSR;"),
            ("&#65;&#x42;&#65a;", "AB&#65a;"),
            ("&amp;amp;", "&amp;"),
        ];
        for (input, want) in cases {
            assert_eq!(ftfy_unescape(input), want, "{input:?}");
        }
    }
}
