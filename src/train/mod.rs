//! LoRA training of the Wan DiT, as musubi-tuner's `wan_train_network.py` does it
//! (lora-guidance-training.md §4).
//!
//! [`LoraNetwork`] is the trainable network (a low-rank pair on every block linear, saved in
//! musubi's format); [`loss`] holds the flow-matching objective and the timestep sampling;
//! [`loss_and_grads`] runs one training step's forward and backward pass through the DiT
//! ([`crate::model::dit::WanDit::train_forward`] / `train_backward`, gradient checkpointing per
//! block, base weights frozen in their stored dtype).

pub mod loss;
mod network;
mod rng;

use std::collections::BTreeMap;

pub use loss::{NoiseLevel, TimestepSampling, Timesteps};
pub use network::{musubi_name, LoraNetwork, LoraPair, TARGETS};
pub use rng::TrainRng;

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
