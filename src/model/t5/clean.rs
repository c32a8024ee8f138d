//! Wan's prompt cleaning (`HuggingfaceTokenizer(clean='whitespace')`, wan-architecture.md §3.3):
//! `ftfy.fix_text`, `html.unescape` twice, strip, `\s+` → one space, strip.
//!
//! Of `ftfy.fix_text` (default config, ftfy 6.x) this implements every step except mojibake
//! repair (`fix_encoding`: re-decoding text that was decoded with the wrong codec, e.g.
//! `cafÃ©` → `café`, which needs ftfy's statistical heuristics) and its 1,000,000-character
//! segment limit: HTML entities (when the text has no `<`), terminal colour escapes, C1
//! controls read as Windows-1252, Latin ligatures, half- and full-width forms (so `，` becomes
//! `,` and `Ａ` becomes `A`), curly quotes, line breaks, invisible control characters, and NFC
//! normalization, repeated until the text stops changing, line by line, as ftfy does.

use std::collections::HashMap;
use std::sync::OnceLock;

use tokenizers::NormalizedString;

use super::html::{ftfy_unescape, html_unescape, CP1252_C1};

/// Cleans a prompt exactly as Wan does before tokenizing (see the module docs for the one
/// `ftfy` step left out). The result has no leading, trailing or repeated whitespace; it is
/// empty when the prompt holds nothing but whitespace.
pub fn clean_prompt(prompt: &str) -> String {
    let text = fix_text(prompt);
    let text = html_unescape(&html_unescape(&text));
    collapse_whitespace(&text)
}

/// Python's `str.isspace` (what `\s` and `strip()` match on `str`): Unicode White_Space plus
/// the information separators U+001C..U+001F.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// `re.sub(r"\s+", " ", text.strip()).strip()`.
fn collapse_whitespace(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text.split(is_py_space).filter(|w| !w.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// `ftfy.fix_text` with the default config, less `fix_encoding`.
fn fix_text(text: &str) -> String {
    // ftfy decides per line whether to decode entities, and once a line holds a literal `<`
    // (the text may be real HTML) it stops for the rest of the text.
    let mut unescape = true;
    let mut out = String::with_capacity(text.len());
    for segment in text.split_inclusive('\n') {
        unescape &= !segment.contains('<');
        out.push_str(&fix_segment(segment, unescape));
    }
    out
}

/// ftfy's `fix_and_explain`: every fixer in its order, until nothing changes.
fn fix_segment(segment: &str, unescape: bool) -> String {
    let mut text = segment.to_string();
    loop {
        let before = text.clone();
        if unescape {
            text = ftfy_unescape(&text);
        }
        text = text.chars().map(fix_c1_control).collect();
        text = map_chars(&text, |c| {
            ligature(c).or_else(|| width_map().get(&c).cloned())
        });
        text = text.chars().map(uncurl_quote).collect();
        text = text.replace("\r\n", "\n");
        text = text
            .chars()
            .map(|c| match c {
                '\r' | '\u{2028}' | '\u{2029}' | '\u{85}' => '\n',
                c => c,
            })
            .collect();
        text = remove_terminal_escapes(&text);
        text.retain(|c| !is_removed_control(c));
        text = nfc(&text);
        if text == before {
            return text;
        }
    }
}

fn map_chars(text: &str, f: impl Fn(char) -> Option<String>) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match f(c) {
            Some(s) => out.push_str(&s),
            None => out.push(c),
        }
    }
    out
}

/// C1 control characters are bytes of Windows-1252 text decoded as Latin-1.
fn fix_c1_control(c: char) -> char {
    match c {
        '\u{80}'..='\u{9f}' => CP1252_C1[c as usize - 0x80],
        c => c,
    }
}

/// ftfy's `LIGATURES`: Latin typographic ligatures and legacy digraphs, split.
fn ligature(c: char) -> Option<String> {
    let s = match c {
        'Ĳ' => "IJ",
        'ĳ' => "ij",
        'ŉ' => "ʼn",
        'Ǳ' => "DZ",
        'ǲ' => "Dz",
        'ǳ' => "dz",
        'Ǆ' => "DŽ",
        'ǅ' => "Dž",
        'ǆ' => "dž",
        'Ǉ' => "LJ",
        'ǈ' => "Lj",
        'ǉ' => "lj",
        'Ǌ' => "NJ",
        'ǋ' => "Nj",
        'ǌ' => "nj",
        'ﬀ' => "ff",
        'ﬁ' => "fi",
        'ﬂ' => "fl",
        'ﬃ' => "ffi",
        'ﬄ' => "ffl",
        'ﬅ' => "ſt",
        'ﬆ' => "st",
        _ => return None,
    };
    Some(s.to_string())
}

/// ftfy's `WIDTH_MAP`: the ideographic space to a space, and every half- or full-width form
/// U+FF01..U+FFEF to its NFKC form.
fn width_map() -> &'static HashMap<char, String> {
    static MAP: OnceLock<HashMap<char, String>> = OnceLock::new();
    MAP.get_or_init(|| {
        let mut map = HashMap::from([('\u{3000}', " ".to_string())]);
        for c in '\u{FF01}'..='\u{FFEF}' {
            let mut n = NormalizedString::from(c.to_string());
            n.nfkc();
            if n.get() != c.to_string() {
                map.insert(c, n.get().to_string());
            }
        }
        map
    })
}

/// ftfy's `uncurl_quotes`.
fn uncurl_quote(c: char) -> char {
    match c {
        '\u{2bc}' | '\u{2018}'..='\u{201b}' => '\'',
        '\u{201c}'..='\u{201f}' => '"',
        c => c,
    }
}

/// ftfy's `remove_terminal_escapes`: `ESC [ (digits | ;)* letter`.
fn remove_terminal_escapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("\u{1b}[") {
        out.push_str(&rest[..at]);
        let tail = &rest[at + 2..];
        let params = tail
            .bytes()
            .take_while(|b| b.is_ascii_digit() || *b == b';')
            .count();
        match tail.as_bytes().get(params) {
            Some(b) if b.is_ascii_alphabetic() => rest = &tail[params + 1..],
            _ => {
                out.push('\u{1b}');
                rest = &rest[at + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// ftfy's `CONTROL_CHARS`: C0 controls other than tab, line feed, form feed and carriage
/// return, DEL, the deprecated format characters, the byte-order mark and the interlinear
/// annotation characters.
fn is_removed_control(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{8}' | '\u{b}' | '\u{e}'..='\u{1f}' | '\u{7f}'
        | '\u{206a}'..='\u{206f}' | '\u{feff}' | '\u{fff9}'..='\u{fffc}')
}

fn nfc(text: &str) -> String {
    if text.is_ascii() {
        return text.to_string();
    }
    let mut n = NormalizedString::from(text);
    n.nfc();
    n.get().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixture_prompts() {
        // The `tokenize` fixture's prompt/cleaned pairs, and the private variant's prompts.
        let cases = [
            (
                "  Rain   on the\tharbor &amp; lanterns  ",
                "Rain on the harbor & lanterns",
            ),
            (
                "明亮的色调，过度曝光，静态画面，最差质量",
                "明亮的色调,过度曝光,静态画面,最差质量",
            ),
            ("바닷가 언덕 위의 소녀", "바닷가 언덕 위의 소녀"),
            (
                "多余的手指, 3D, CGI &lt;bad&gt;",
                "多余的手指, 3D, CGI <bad>",
            ),
            ("Close-up:   brass gears!!  ", "Close-up: brass gears!!"),
        ];
        for (prompt, want) in cases {
            assert_eq!(clean_prompt(prompt), want, "{prompt:?}");
        }
    }

    #[test]
    fn ftfy_fixers() {
        // Outputs of ftfy 6 `fix_text` (then Wan's unescape and whitespace steps).
        let cases = [
            ("ＬＯＵＤ　ＮＯＩＳＥＳ", "LOUD NOISES"),
            ("Ｕﾀｰﾝ", "Uターン"),
            ("ﬂuﬃeﬆ", "fluffiest"),
            ("\u{201c}here\u{2019}s a test\u{201d}", "\"here's a test\""),
            ("\u{1b}[36;44mblue\u{1b}[0m", "blue"),
            ("a\u{0}\u{8}b\u{7f}c\u{feff}", "abc"),
            ("price \u{80}5", "price €5"),
            ("e\u{301}", "é"),
            ("P&EACUTE;REZ", "PÉREZ"),
            ("one\r\ntwo\rthree\u{2028}four", "one two three four"),
            // U+001C is a removed control to ftfy, though whitespace to Python.
            ("a\u{a0}b\u{3000}c\u{1c}d", "a b cd"),
        ];
        for (prompt, want) in cases {
            assert_eq!(clean_prompt(prompt), want, "{prompt:?}");
        }
    }

    #[test]
    fn unescaping_is_repeated() {
        // ftfy decodes until stable (no `<` in the text), then Wan unescapes twice more.
        assert_eq!(clean_prompt("&amp;amp;amp;amp;lt;"), "<");
        // A literal `<` turns ftfy's decoding off: only Wan's two passes remain.
        assert_eq!(clean_prompt("< &amp;amp;amp;lt;"), "< &amp;lt;");
    }

    #[test]
    fn empty_and_blank() {
        assert_eq!(clean_prompt(""), "");
        assert_eq!(clean_prompt(" \t\n "), "");
    }
}
