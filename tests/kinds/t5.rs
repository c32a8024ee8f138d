//! `t5_encode` and `tokenize` cases.
//!
//! `t5_encode`: the UMT5 encoder of the case's checkpoint (`.pth`, original or transformers
//! safetensors) on `ids` and `mask` `[B, text_len]` (ids padded with 0, mask 1 on real tokens);
//! expected `hidden` `[B, text_len, dim]`, zero past each prompt's length.
//!
//! `tokenize`: every `prompts[i]` is cleaned and tokenized; `cleaned` and `ids` must be equal
//! exactly (reported as rel_l2 0), otherwise the case fails naming the first differing prompt.

use serde_json::Value;
use wanrt::backend::Device;
use wanrt::model::t5::{clean_prompt, Umt5Encoder, Umt5Tokenizer};

use super::{compare, Check, Output, Stop};
use crate::common::{tensor, Case};

pub fn run(case: &Case) -> Result<Vec<Check>, Stop> {
    match case.kind.as_str() {
        "t5_encode" => encode(case, Device::Cpu),
        _ => tokenize(case),
    }
}

/// Runs a `t5_encode` case with the encoder on `device`.
pub fn encode(case: &Case, device: Device) -> Result<Vec<Check>, Stop> {
    let t5 = Umt5Encoder::open(case.path("t5")?, Some(&case.path("config")?))?.to_device(device)?;
    let inputs = case.tensors("inputs")?;
    let ids = tensor(&inputs, "ids")?;
    let mask = tensor(&inputs, "mask")?.to_f32_vec()?;
    let &[batch, len] = ids.dims() else {
        return Err(Stop::Fail(format!(
            "ids must be [B, L], got {:?}",
            ids.dims()
        )));
    };
    let ids = ids.to_f32_vec()?;
    if mask.len() != ids.len() {
        return Err(Stop::Fail("mask and ids differ in shape".into()));
    }
    let mut prompts = Vec::with_capacity(batch);
    for b in 0..batch {
        let row = &mask[b * len..][..len];
        let n = row.iter().take_while(|&&m| m == 1.0).count();
        if row[n..].iter().any(|&m| m != 0.0) {
            return Err(Stop::Fail(format!("mask row {b} is not 1s then 0s")));
        }
        let seq: Vec<u32> = ids[b * len..][..n].iter().map(|&v| v as u32).collect();
        prompts.push(seq);
    }
    let refs: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let hidden = t5.forward(&refs)?.to_device(Device::Cpu)?;
    let output = Output {
        name: "hidden".into(),
        dims: hidden.dims().to_vec(),
        data: hidden.to_f32_vec()?.into_iter().map(f64::from).collect(),
    };
    compare(&case.tensors("expected")?, &[output])
}

fn tokenize(case: &Case) -> Result<Vec<Check>, Stop> {
    let tok = Umt5Tokenizer::from_file(case.path("tokenizer")?)?;
    let prompts = case
        .get("prompts")
        .and_then(Value::as_array)
        .ok_or_else(|| Stop::Fail("case.json field `prompts` must be a list".into()))?;
    let mut checks = Vec::with_capacity(prompts.len());
    for (i, p) in prompts.iter().enumerate() {
        let bad = |what: &str| Stop::Fail(format!("prompts[{i}]: {what}"));
        let text = |k: &str| p.get(k).and_then(Value::as_str).ok_or_else(|| bad(k));
        let (prompt, want_cleaned) = (text("prompt")?, text("cleaned")?);
        let want_ids: Vec<u32> = p
            .get("ids")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().map(|v| v.as_u64().map(|x| x as u32)).collect())
            .ok_or_else(|| bad("`ids` must be a list of integers"))?;
        let cleaned = clean_prompt(prompt);
        if cleaned != want_cleaned {
            return Err(Stop::Fail(format!(
                "prompt {i} {prompt:?}: cleaned to {cleaned:?}, expected {want_cleaned:?}"
            )));
        }
        let got = tok.tokenize(prompt)?;
        if got.ids != want_ids {
            return Err(Stop::Fail(format!(
                "prompt {i} {prompt:?}: ids {:?}, expected {want_ids:?}",
                got.ids
            )));
        }
        checks.push(Check {
            name: format!("prompts[{i}]"),
            rel_l2: 0.0,
            max_abs: None,
        });
    }
    Ok(checks)
}
