//! LoRA training of the Wan DiT, as musubi-tuner's `wan_train_network.py` does it
//! (lora-guidance-training.md §4).
//!
//! [`LoraNetwork`] is the trainable network (a low-rank pair on every block linear, saved in
//! musubi's format); [`loss`] holds the flow-matching objective and the timestep sampling;
//! [`loss_and_grads`] runs one training step's forward and backward pass through the DiT
//! ([`crate::model::dit::WanDit::train_forward`] / `train_backward`, gradient checkpointing per
//! block, base weights frozen in their stored dtype); [`optim`] holds AdamW, clipping and the
//! schedules; [`Trainer`] is the seeded loop over musubi cache files ([`cache`]) with LoRA
//! saving and a resumable state; [`TrainingRun`] drives it with musubi's intermediate saves,
//! the [`metrics`] file and a save on cancel; [`TrainOptions`] is musubi's command line.
//! [`dataset`] reads musubi's dataset TOML (frame windows, aspect-ratio buckets) and its media;
//! [`caching`] writes the caches from it.
//!
//! A run from musubi's flags, cancelled after 100 steps (the LoRA of those steps is saved):
//!
//! ```no_run
//! use wanrt::sampler::Flow;
//! use wanrt::train::{Event, TrainOptions};
//!
//! let options = TrainOptions::parse([
//!     "--dit", "dit.safetensors", "--cache_directory", "cache",
//!     "--output_dir", "out", "--output_name", "mine", "--network_dim", "16",
//! ])?;
//! let mut run = options.start()?;
//! let ending = run.run(&mut |event| match event {
//!     Event::Step(r) if r.step == 100 => Flow::Cancel,
//!     _ => Flow::Continue,
//! })?;
//! println!("{ending:?}");
//! # Ok::<(), wanrt::Error>(())
//! ```

pub mod cache;
pub mod caching;
pub mod dataset;
pub mod loss;
pub mod metrics;
mod network;
pub mod optim;
mod options;
mod rng;
mod run;
pub mod samples;
mod trainer;

use std::collections::BTreeMap;

pub use loss::{NoiseLevel, TimestepSampling, Timesteps};
pub use network::{musubi_name, LoraNetwork, LoraPair};
pub use options::TrainOptions;
pub use rng::TrainRng;
pub use run::{Ending, Event, Outputs, TrainingRun};
pub use trainer::{StepReport, TrainConfig, Trainer};

use crate::error::Result;
use crate::model::dit::{DeltaGrad, WanDit};
use crate::tensor::Tensor;

/// The flow-matching loss of a batch and its gradient with respect to every module of `net`
/// (by canonical module path): `x0` and `noise` are `[B, in_dim, T, H, W]` f32, `levels` one
/// noise level per sample, `context` one unpadded text embedding `[L_b, text_dim]` per sample.
pub fn loss_and_grads(
    dit: &WanDit,
    net: &LoraNetwork,
    x0: &Tensor,
    noise: &Tensor,
    levels: &[NoiseLevel],
    context: &[Tensor],
) -> Result<(f64, BTreeMap<String, DeltaGrad>)> {
    let sigmas: Vec<f32> = levels.iter().map(|l| l.sigma).collect();
    let timesteps: Vec<f32> = levels.iter().map(|l| l.timestep).collect();
    let (x_t, target) = loss::noisy_input(x0, noise, &sigmas)?;
    let text = dit.encode_text(context, false)?;
    let adapters = net.adapters();
    let (velocity, tape) = dit.train_forward(&x_t, &timesteps, &text, &adapters)?;
    let (loss, d_velocity) = loss::mse(&velocity, &target)?;
    let grads = dit.train_backward(tape, &d_velocity, &adapters)?;
    Ok((loss, grads))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::dit::tests::tiny;
    use crate::model::dit::{weight_shapes, ForwardOptions, LinearDelta};
    use crate::tensor::{random, DType, Weight};

    /// A random DiT with `dtype` base weights and a network whose `up`s are random too (a fresh
    /// network's zero `up`s would zero every `down` gradient).
    fn setup(layers: usize, dtype: DType) -> (WanDit, LoraNetwork) {
        let c = tiny(layers);
        let w = weight_shapes(&c)
            .into_iter()
            .enumerate()
            .map(|(i, (n, d))| {
                (
                    n,
                    random::weight(&d, dtype, 100 + i as u32, 0.0, 0.4).unwrap(),
                )
            })
            .collect();
        let dit = WanDit::new(w, c.clone()).unwrap();
        let mut net = LoraNetwork::new(&c, 3, 6.0, 1).unwrap();
        for (i, (_, p)) in net.modules_mut().enumerate() {
            p.up = random::tensor(p.up.dims(), 500 + i as u32, 0.0, 0.3).unwrap();
        }
        (dit, net)
    }

    fn inputs() -> (Tensor, Tensor, Vec<Tensor>) {
        let x0 = random::tensor(&[1, 4, 2, 4, 6], 1, 0.0, 1.0).unwrap();
        let noise = random::tensor(&[1, 4, 2, 4, 6], 2, 0.0, 1.0).unwrap();
        (
            x0,
            noise,
            vec![random::tensor(&[3, 12], 3, 0.0, 1.0).unwrap()],
        )
    }

    const LEVEL: NoiseLevel = NoiseLevel {
        sigma: 0.4,
        timestep: 400.0,
    };

    /// The training forward is the inference forward with the network attached as deltas.
    #[test]
    fn train_forward_is_the_forward_with_the_lora_attached() {
        let (mut dit, net) = setup(2, DType::BF16);
        let (x0, _, ctx) = inputs();
        let text = dit.encode_text(&ctx, false).unwrap();
        let (v, _) = dit
            .train_forward(&x0, &[400.0], &text, &net.adapters())
            .unwrap();
        let deltas = net
            .modules()
            .iter()
            .map(|(n, p)| {
                let up = p.up.affine(net.scale(), 0.0).unwrap();
                (n.clone(), LinearDelta::new(p.down.clone(), up).unwrap())
            })
            .collect();
        dit.set_linear_deltas(deltas).unwrap();
        let want = dit
            .forward(&x0, &[400.0], &ctx, &ForwardOptions::default())
            .unwrap();
        let (a, b) = (v.to_f32_vec().unwrap(), want.to_f32_vec().unwrap());
        let err = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(err < 1e-4, "max abs diff {err}");
        // With deltas attached, training refuses (their backward is not implemented).
        assert!(dit
            .train_forward(&x0, &[400.0], &text, &net.adapters())
            .is_err());
    }

    /// The backward through one block (bf16 base) against central finite differences of the
    /// loss along a random direction of every LoRA tensor.
    #[test]
    fn lora_grads_match_finite_differences_through_one_block() {
        let (dit, net) = setup(1, DType::BF16);
        let (x0, noise, ctx) = inputs();
        let loss =
            |net: &LoraNetwork| loss_and_grads(&dit, net, &x0, &noise, &[LEVEL], &ctx).unwrap();
        let (base, grads) = loss(&net);
        assert_eq!(grads.len(), 10);
        let eps = 1e-2f32;
        for (k, (name, g)) in grads.iter().enumerate() {
            for (part, grad) in [("down", &g.down), ("up", &g.up)] {
                let dir = random::tensor(grad.dims(), 900 + k as u32, 0.0, 1.0).unwrap();
                let shifted = |sign: f32| {
                    let mut n = net.clone();
                    let (_, p) = n.modules_mut().find(|(m, _)| *m == name).unwrap();
                    let t = if part == "down" {
                        &mut p.down
                    } else {
                        &mut p.up
                    };
                    *t = t.add(&dir.affine(sign * eps, 0.0).unwrap()).unwrap();
                    loss(&n).0
                };
                let numeric = (shifted(1.0) - shifted(-1.0)) / (2.0 * eps as f64);
                let (gv, dv) = (grad.to_f32_vec().unwrap(), dir.to_f32_vec().unwrap());
                let analytic: f64 = gv.iter().zip(&dv).map(|(&a, &b)| a as f64 * b as f64).sum();
                // The f32 forward rounds the loss to about 1e-7 of itself, which the difference
                // quotient magnifies by 1/2ε: that floor is allowed on top of 0.5%.
                let tol = 5e-3 * analytic.abs() + 1e-5 * base;
                let err = (numeric - analytic).abs();
                assert!(
                    err < tol,
                    "{name}.{part}: numeric {numeric} analytic {analytic}"
                );
            }
        }
        let bad = Weight::new(random::tensor(&[2, 2], 1, 0.0, 1.0).unwrap());
        let mut wrong = net.adapters();
        wrong.get_mut("blocks.0.ffn.0").unwrap().down = bad.tensor;
        let text = dit.encode_text(&ctx, false).unwrap();
        assert!(dit.train_forward(&x0, &[400.0], &text, &wrong).is_err());
    }

    /// A scaled fp8 base (kept as stored, widened panel by panel) trains as its f32 values do.
    #[test]
    fn fp8_base_weights_give_the_gradients_of_their_values() {
        let c = tiny(1);
        let fp8: BTreeMap<String, Weight> = weight_shapes(&c)
            .into_iter()
            .enumerate()
            .map(|(i, (n, d))| {
                let mut w = random::weight(&d, DType::F8E4M3, 100 + i as u32, 0.0, 0.4).unwrap();
                w.scale = Some(0.75);
                (n, w)
            })
            .collect();
        let wide = fp8
            .iter()
            .map(|(n, w)| (n.clone(), Weight::new(w.to_f32().unwrap())))
            .collect();
        let (_, net) = setup(1, DType::BF16);
        let (x0, noise, ctx) = inputs();
        let run = |w| {
            let dit = WanDit::new(w, c.clone()).unwrap();
            loss_and_grads(&dit, &net, &x0, &noise, &[LEVEL], &ctx).unwrap()
        };
        let ((l8, g8), (l32, g32)) = (run(fp8), run(wide));
        assert!((l8 - l32).abs() <= 1e-6 * l32.abs());
        for (name, a) in &g8 {
            let b = &g32[name];
            for (x, y) in [(&a.down, &b.down), (&a.up, &b.up)] {
                let (x, y) = (x.to_f32_vec().unwrap(), y.to_f32_vec().unwrap());
                let num: f64 = x
                    .iter()
                    .zip(&y)
                    .map(|(p, q)| ((p - q) as f64).powi(2))
                    .sum();
                let den: f64 = y.iter().map(|q| (*q as f64).powi(2)).sum();
                assert!(num.sqrt() <= 1e-5 * den.sqrt(), "{name}");
            }
        }
    }
}
