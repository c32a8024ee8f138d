//! The fixture kinds the harness can run, one runner per kind.
//!
//! A runner reads its case (`case.json`, the inputs, the models it names), computes the outputs
//! with wanrt and returns one [`Check`] per expected tensor, usually through [`compare`].

pub mod bf16;
pub mod dit;
mod lora;
pub mod pipeline;
pub mod sampler;
pub mod t5;
mod train;
pub mod vae;

use wanrt::model::dit::{AttentionChoice, SelfAttention};
use wanrt::DType;

use crate::common::{f64_data, Case, Tensors};

/// Runs one case of a kind.
pub type Runner = fn(&Case) -> Result<Vec<Check>, Stop>;

/// Every implemented kind. A kind not listed here is reported as skipped.
pub const RUNNERS: &[(&str, Runner)] = &[
    ("dit_forward", dit::run),
    ("dit_forward_nag", dit::run),
    ("lora_merge", lora::run),
    ("lora_train_step", train::run),
    ("pipeline", pipeline::run),
    ("sampler", sampler::run),
    ("t5_encode", t5::run),
    ("tokenize", t5::run),
    ("vae_decode", vae::run),
    ("vae_encode", vae::run),
];

/// Kinds whose output goes through the DiT's self-attention: `WANRT_ATTENTION=q8` runs them
/// with the 8-bit scheme and holds them to the case's `rel_l2_bf16_compute`.
pub const DIT_KINDS: &[&str] = &["dit_forward", "dit_forward_nag"];

/// The DiT self-attention the harness runs, from `WANRT_ATTENTION` (`auto`, `bf16` or unset:
/// the CPU's exact attention; `q8`: the 8-bit scheme's emulation).
pub fn dit_attention() -> Result<SelfAttention, String> {
    match std::env::var("WANRT_ATTENTION") {
        Err(_) => Ok(SelfAttention::Exact),
        Ok(v) => v
            .parse::<AttentionChoice>()
            .map(AttentionChoice::on_cpu)
            .map_err(|e| format!("WANRT_ATTENTION: {e}")),
    }
}

/// The error of one expected tensor.
#[derive(Debug, Clone)]
pub struct Check {
    /// The expected tensor's name.
    pub name: String,
    /// `‖out − expected‖₂ / ‖expected‖₂`.
    pub rel_l2: f64,
    /// A second bound some cases state for a tensor (`frames_max_abs_diff`): the largest
    /// `|out − expected|` over its elements and the tolerance for it. The harness prints it on
    /// the case's line and fails the case when it is exceeded.
    pub max_abs: Option<MaxAbs>,
}

/// A max-abs-diff check: see [`Check::max_abs`].
#[derive(Debug, Clone, Copy)]
pub struct MaxAbs {
    /// `max |out − expected|`.
    pub value: f64,
    /// The largest value allowed.
    pub tol: f64,
}

impl MaxAbs {
    /// The max-abs difference of `out` against `expected` (NaN when the lengths differ or a
    /// value is NaN), with its tolerance.
    pub fn of(out: &[f64], expected: &[f64], tol: f64) -> MaxAbs {
        let diffs = out.iter().zip(expected).map(|(a, b)| (a - b).abs());
        // NaN is worse than any number (f64::max would skip it).
        let value = if out.len() != expected.len() || diffs.clone().any(f64::is_nan) {
            f64::NAN
        } else {
            diffs.fold(0.0, f64::max)
        };
        MaxAbs { value, tol }
    }

    /// Whether the bound holds (NaN fails).
    pub fn ok(&self) -> bool {
        self.value <= self.tol
    }
}

/// Why a runner stopped without checks.
#[derive(Debug)]
pub enum Stop {
    /// The case needs something not implemented yet.
    Skip(String),
    /// The case could not be run (bad case file, a wanrt error …): a failure.
    Fail(String),
}

impl From<String> for Stop {
    fn from(s: String) -> Stop {
        Stop::Fail(s)
    }
}

impl From<wanrt::Error> for Stop {
    fn from(e: wanrt::Error) -> Stop {
        Stop::Fail(e.to_string())
    }
}

/// An output a runner computed: its name (that of the expected tensor), shape and values.
pub struct Output {
    /// The expected tensor it is compared with.
    pub name: String,
    /// Its dimensions.
    pub dims: Vec<usize>,
    /// Its values in row-major order.
    pub data: Vec<f64>,
}

impl Output {
    /// The output `name` holding the values of `t`.
    pub fn of(name: String, t: &wanrt::Tensor) -> Result<Output, Stop> {
        Ok(Output {
            name,
            dims: t.dims().to_vec(),
            data: t.to_f32_vec()?.into_iter().map(f64::from).collect(),
        })
    }
}

/// Compares every tensor of `expected` with the output of the same name. An expected tensor
/// without an output, or with an output of another shape, fails the case; outputs without an
/// expected tensor are ignored.
///
/// An output is first rounded to the dtype its reference is stored in (f32): the reference was
/// rounded so when it was saved, and an output computed in f64 is judged the same way.
pub fn compare(expected: &Tensors, outputs: &[Output]) -> Result<Vec<Check>, Stop> {
    let mut checks = Vec::with_capacity(expected.len());
    for (name, want) in expected {
        let out = outputs
            .iter()
            .find(|o| &o.name == name)
            .ok_or_else(|| format!("expected tensor `{name}` was not computed"))?;
        if out.dims != want.dims() {
            return Err(Stop::Fail(format!(
                "`{name}`: computed shape {:?}, expected {:?}",
                out.dims,
                want.dims()
            )));
        }
        let stored: Vec<f64> = match want.dtype() {
            DType::F32 => out.data.iter().map(|&v| v as f32 as f64).collect(),
            _ => out.data.clone(),
        };
        let rel_l2 = crate::common::rel_l2(&stored, &f64_data(want)?);
        checks.push(Check {
            name: name.clone(),
            rel_l2,
            max_abs: None,
        });
    }
    Ok(checks)
}
