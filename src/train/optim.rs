//! AdamW with f32 states (torch's `AdamW`), gradient clipping by global norm
//! (`clip_grad_norm_`) and the learning-rate schedules `constant`, `constant_with_warmup` and
//! `cosine` (diffusers' `get_scheduler`), as musubi-tuner uses them (lora-guidance-training.md
//! §4.1, §4.4).

use std::collections::BTreeMap;

use super::network::LoraNetwork;
use crate::error::{Error, Result};
use crate::model::dit::DeltaGrad;
use crate::tensor::Tensor;

/// `--lr_scheduler`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scheduler {
    /// The learning rate throughout.
    #[default]
    Constant,
    /// Linear warmup from 0 over `lr_warmup_steps`, then constant.
    ConstantWithWarmup,
    /// Linear warmup, then half a cosine from the learning rate down to 0 at the last step.
    Cosine,
}

impl Scheduler {
    /// The schedule of musubi's flag value.
    pub fn parse(s: &str) -> Result<Scheduler> {
        Ok(match s {
            "constant" => Scheduler::Constant,
            "constant_with_warmup" => Scheduler::ConstantWithWarmup,
            "cosine" => Scheduler::Cosine,
            other => {
                return Err(Error::InvalidArgument(format!(
                    "lr_scheduler `{other}`: expected constant, constant_with_warmup or cosine"
                )))
            }
        })
    }

    /// The factor of the learning rate at optimizer step `step` (from 0) of `total`, with
    /// `warmup` warmup steps.
    pub fn factor(self, step: usize, warmup: usize, total: usize) -> f64 {
        let warm = || step as f64 / warmup.max(1) as f64;
        match self {
            Scheduler::Constant => 1.0,
            Scheduler::ConstantWithWarmup if step < warmup => warm(),
            Scheduler::ConstantWithWarmup => 1.0,
            Scheduler::Cosine if step < warmup => warm(),
            Scheduler::Cosine => {
                let progress =
                    (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
                (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
            }
        }
    }
}

/// Scales every gradient so that their global L2 norm is at most `max_norm` (0 disables):
/// `g *= min(1, max_norm / (norm + 1e-6))`. Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut BTreeMap<String, DeltaGrad>, max_norm: f64) -> Result<f64> {
    let mut sum = 0.0f64;
    for g in grads.values() {
        for t in [&g.down, &g.up] {
            sum += t
                .f32_data()?
                .iter()
                .map(|&v| v as f64 * v as f64)
                .sum::<f64>();
        }
    }
    let norm = sum.sqrt();
    if max_norm > 0.0 {
        let coef = (max_norm / (norm + 1e-6)).min(1.0) as f32;
        if coef < 1.0 {
            for g in grads.values_mut() {
                g.down = g.down.affine(coef, 0.0)?;
                g.up = g.up.affine(coef, 0.0)?;
            }
        }
    }
    Ok(norm)
}

/// AdamW's hyper-parameters (torch's defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWParams {
    /// `β1` (0.9).
    pub beta1: f32,
    /// `β2` (0.999).
    pub beta2: f32,
    /// `ε` (1e-8).
    pub eps: f32,
    /// Decoupled weight decay (0.01).
    pub weight_decay: f32,
}

impl Default for AdamWParams {
    fn default() -> AdamWParams {
        AdamWParams {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// The first and second moments of one parameter tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Moments {
    /// `exp_avg`.
    pub m: Vec<f32>,
    /// `exp_avg_sq`.
    pub v: Vec<f32>,
}

/// AdamW over a [`LoraNetwork`], with f32 moments per `down` and `up`.
#[derive(Debug, Clone)]
pub struct AdamW {
    /// The hyper-parameters.
    pub params: AdamWParams,
    /// Steps taken (torch's `state["step"]`).
    pub steps: u64,
    /// Moments by `<module>.down` / `<module>.up`.
    pub moments: BTreeMap<String, Moments>,
}

impl AdamW {
    /// A fresh optimizer (zero moments, created on the first step).
    pub fn new(params: AdamWParams) -> AdamW {
        AdamW {
            params,
            steps: 0,
            moments: BTreeMap::new(),
        }
    }

    /// One update of every module of `net` that has a gradient, at learning rate `lr`:
    /// `p ← p·(1 − lr·wd)`, `m ← β1·m + (1 − β1)·g`, `v ← β2·v + (1 − β2)·g²`,
    /// `p ← p − lr/(1 − β1ᵗ) · m / (√v/√(1 − β2ᵗ) + ε)`.
    pub fn step(
        &mut self,
        net: &mut LoraNetwork,
        grads: &BTreeMap<String, DeltaGrad>,
        lr: f32,
    ) -> Result<()> {
        self.steps += 1;
        let p = self.params;
        let t = self.steps as i32;
        let bc1 = 1.0 - p.beta1.powi(t);
        let bc2_sqrt = (1.0 - p.beta2.powi(t)).sqrt();
        let step_size = lr / bc1;
        for (name, pair) in net.modules_mut() {
            let Some(g) = grads.get(name) else { continue };
            for (part, param, grad) in [
                ("down", &mut pair.down, &g.down),
                ("up", &mut pair.up, &g.up),
            ] {
                if grad.dims() != param.dims() {
                    return Err(Error::ShapeMismatch {
                        op: "AdamW::step",
                        expected: format!("a gradient of `{name}.{part}` like {:?}", param.dims()),
                        got: grad.shape().clone(),
                    });
                }
                let n = param.elem_count();
                let st = self
                    .moments
                    .entry(format!("{name}.{part}"))
                    .or_insert_with(|| Moments {
                        m: vec![0.0; n],
                        v: vec![0.0; n],
                    });
                let mut w = param.to_f32_vec()?;
                for (((w, &g), m), v) in w
                    .iter_mut()
                    .zip(grad.f32_data()?)
                    .zip(&mut st.m)
                    .zip(&mut st.v)
                {
                    *w *= 1.0 - lr * p.weight_decay;
                    *m = p.beta1 * *m + (1.0 - p.beta1) * g;
                    *v = p.beta2 * *v + (1.0 - p.beta2) * g * g;
                    *w -= step_size * *m / (v.sqrt() / bc2_sqrt + p.eps);
                }
                *param = Tensor::from_f32(w, param.shape().clone())?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_follow_diffusers() {
        assert_eq!(Scheduler::Constant.factor(0, 10, 100), 1.0);
        assert_eq!(Scheduler::ConstantWithWarmup.factor(5, 10, 100), 0.5);
        assert_eq!(Scheduler::ConstantWithWarmup.factor(50, 10, 100), 1.0);
        assert_eq!(Scheduler::Cosine.factor(2, 4, 100), 0.5);
        assert_eq!(Scheduler::Cosine.factor(4, 4, 104), 1.0);
        assert!((Scheduler::Cosine.factor(54, 4, 104) - 0.5).abs() < 1e-12);
        assert!(Scheduler::Cosine.factor(104, 4, 104).abs() < 1e-12);
        assert!(Scheduler::parse("linear").is_err());
    }

    /// One AdamW step by hand: with bias correction the first step moves each weight by
    /// `lr·g/(|g| + ε)` after the decay.
    #[test]
    fn adamw_first_step_and_clipping() {
        let cfg = crate::model::dit::DitConfig {
            model_type: crate::io::config::ModelType::T2v,
            dim: 4,
            ffn_dim: 8,
            num_heads: 1,
            num_layers: 1,
            in_dim: 4,
            out_dim: 4,
            text_dim: 4,
            freq_dim: 4,
            text_len: 2,
            eps: 1e-6,
            patch_size: [1, 2, 2],
        };
        let mut net = LoraNetwork::new(&cfg, 2, 1.0, 3).unwrap();
        let name = "blocks.0.ffn.0".to_string();
        let before = net.modules()[&name].down.to_f32_vec().unwrap();
        let g = DeltaGrad {
            down: Tensor::from_f32((0..8).map(|i| i as f32 - 3.5).collect(), [2, 4]).unwrap(),
            up: Tensor::from_f32(vec![0.0; 16], [8, 2]).unwrap(),
        };
        let mut grads = BTreeMap::from([(name.clone(), g)]);
        let norm = clip_grad_norm(&mut grads, 1.0).unwrap();
        assert!((norm - 42f64.sqrt()).abs() < 1e-9);
        let clipped = grads[&name].down.to_f32_vec().unwrap();
        let new_norm = clipped.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((new_norm - 1.0).abs() < 1e-5);
        let mut opt = AdamW::new(AdamWParams::default());
        opt.step(&mut net, &grads, 0.1).unwrap();
        let after = net.modules()[&name].down.to_f32_vec().unwrap();
        for ((b, a), g) in before.iter().zip(&after).zip(&clipped) {
            let want = b * (1.0 - 0.1 * 0.01) - 0.1 * g / (g.abs() + 1e-8);
            assert!((a - want).abs() < 1e-6, "{a} vs {want}");
        }
        assert_eq!(opt.steps, 1);
        assert_eq!(opt.moments.len(), 2);
    }
}
