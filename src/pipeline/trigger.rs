//! A style LoRA's trigger phrase ("Studio Ghibli style."), read from its safetensors metadata.
//!
//! No Wan trainer writes a dedicated key (musubi-tuner writes `ss_*` training details and the
//! SAI model-spec `modelspec.*` keys, lora-guidance-training.md §1.2), so the phrase is taken
//! from, in order:
//! 1. `modelspec.trigger_phrase` (SAI model spec 1.0.1), `trigger_phrase`, `trigger_word` or
//!    `trigger_words` (written by hand or by sharing sites);
//! 2. kohya's `ss_tag_frequency` (`{dataset: {tag: count}}`): the most frequent tag, which for
//!    a style or character LoRA is the token it was trained on.

use std::collections::BTreeMap;

use serde_json::Value;

const KEYS: [&str; 4] = [
    "modelspec.trigger_phrase",
    "trigger_phrase",
    "trigger_word",
    "trigger_words",
];

/// The trigger phrase recorded in a LoRA's metadata, if any.
pub fn trigger_phrase(metadata: &BTreeMap<String, String>) -> Option<String> {
    let explicit = KEYS
        .iter()
        .filter_map(|k| metadata.get(*k))
        .map(|v| v.trim())
        .find(|v| !v.is_empty());
    if let Some(v) = explicit {
        return Some(v.to_string());
    }
    let freq: Value = serde_json::from_str(metadata.get("ss_tag_frequency")?).ok()?;
    let mut counts: BTreeMap<&str, f64> = BTreeMap::new();
    for tags in freq.as_object()?.values().filter_map(Value::as_object) {
        for (tag, n) in tags {
            let tag = tag.trim();
            if !tag.is_empty() {
                *counts.entry(tag).or_default() += n.as_f64().unwrap_or(0.0);
            }
        }
    }
    // The highest count; among equals the first in sorted order, so the result is stable.
    let mut best: Option<(&str, f64)> = None;
    for (tag, n) in counts {
        if best.is_none_or(|(_, b)| n > b) {
            best = Some((tag, n));
        }
    }
    best.map(|(t, _)| t.to_string())
}

/// `prompt` with the trigger phrases in front, each once, skipping those it already contains.
pub fn with_triggers(prompt: &str, triggers: &[String]) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for t in triggers {
        if !prompt.contains(t.as_str()) && !parts.contains(&t.as_str()) {
            parts.push(t);
        }
    }
    if parts.is_empty() {
        return prompt.to_string();
    }
    parts.push(prompt);
    parts.retain(|p| !p.is_empty());
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn explicit_keys_then_tag_frequency() {
        assert_eq!(trigger_phrase(&meta(&[])), None);
        let m = meta(&[
            ("modelspec.trigger_phrase", " Studio Ghibli style. "),
            ("ss_tag_frequency", r#"{"a": {"x": 9}}"#),
        ]);
        assert_eq!(trigger_phrase(&m).as_deref(), Some("Studio Ghibli style."));
        let m = meta(&[(
            "ss_tag_frequency",
            r#"{"set1": {"ghibli style": 40, "girl": 12}, "set2": {"girl": 30}}"#,
        )]);
        assert_eq!(trigger_phrase(&m).as_deref(), Some("girl"));
        assert_eq!(trigger_phrase(&meta(&[("ss_tag_frequency", "nope")])), None);
    }

    #[test]
    fn prepends_each_trigger_once() {
        let t = vec!["Ghibli style.".to_string(), "Ghibli style.".to_string()];
        assert_eq!(with_triggers("a hill", &t), "Ghibli style. a hill");
        assert_eq!(
            with_triggers("Ghibli style. a hill", &t),
            "Ghibli style. a hill"
        );
        assert_eq!(with_triggers("", &t), "Ghibli style.");
        assert_eq!(with_triggers("a hill", &[]), "a hill");
    }
}
