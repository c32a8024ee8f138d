//! `wanrt train`: LoRA training of the DiT on musubi-tuner cache files, with musubi's flag
//! names (`--network_dim` and `--network-dim` alike).

use std::path::PathBuf;

use clap::Args;
use wanrt::model::dit::WanDit;
use wanrt::train::cache::list_items;
use wanrt::train::optim::Scheduler;
use wanrt::train::{TimestepSampling, Timesteps, TrainConfig, Trainer};
use wanrt::Result;

/// Arguments of `wanrt train`.
#[derive(Args)]
pub struct TrainArgs {
    /// The base DiT: a file or a sharded folder, in any layout and dtype (kept as stored).
    #[arg(long)]
    dit: PathBuf,
    /// A Wan `config.json` for the DiT (otherwise inferred from the shapes).
    #[arg(long = "dit-config", alias = "dit_config")]
    dit_config: Option<PathBuf>,
    /// The folder of musubi latent and text-encoder caches (`*_wan.safetensors`,
    /// `*_wan_te.safetensors`); dataset TOML files are not read yet.
    #[arg(long = "cache_directory", alias = "cache-directory")]
    cache_directory: PathBuf,
    /// Where the LoRA (and states) are written.
    #[arg(long = "output_dir", alias = "output-dir")]
    output_dir: PathBuf,
    /// The LoRA's file name, without `.safetensors`.
    #[arg(long = "output_name", alias = "output-name")]
    output_name: String,
    /// LoRA rank.
    #[arg(long = "network_dim", alias = "network-dim", default_value_t = 4)]
    network_dim: usize,
    /// LoRA alpha (scale = alpha / rank).
    #[arg(long = "network_alpha", alias = "network-alpha", default_value_t = 1.0)]
    network_alpha: f32,
    /// Peak learning rate.
    #[arg(
        long = "learning_rate",
        alias = "learning-rate",
        default_value_t = 2e-6
    )]
    learning_rate: f32,
    /// constant, constant_with_warmup or cosine.
    #[arg(
        long = "lr_scheduler",
        alias = "lr-scheduler",
        default_value = "constant"
    )]
    lr_scheduler: String,
    /// Warmup steps.
    #[arg(
        long = "lr_warmup_steps",
        alias = "lr-warmup-steps",
        default_value_t = 0
    )]
    lr_warmup_steps: usize,
    /// Steps to train (overridden by --max_train_epochs).
    #[arg(
        long = "max_train_steps",
        alias = "max-train-steps",
        default_value_t = 1600
    )]
    max_train_steps: usize,
    /// Epochs to train.
    #[arg(long = "max_train_epochs", alias = "max-train-epochs")]
    max_train_epochs: Option<usize>,
    /// Gradient clipping by global norm (0 disables).
    #[arg(long = "max_grad_norm", alias = "max-grad-norm", default_value_t = 1.0)]
    max_grad_norm: f64,
    /// Seed of the initialisation, the item order, the noise and the timesteps.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// sigma, uniform, sigmoid or shift.
    #[arg(
        long = "timestep_sampling",
        alias = "timestep-sampling",
        default_value = "sigma"
    )]
    timestep_sampling: String,
    /// The shift of `--timestep_sampling shift`.
    #[arg(
        long = "discrete_flow_shift",
        alias = "discrete-flow-shift",
        default_value_t = 1.0
    )]
    discrete_flow_shift: f64,
    /// The scale of the sigmoid and shift samplers.
    #[arg(long = "sigmoid_scale", alias = "sigmoid-scale", default_value_t = 1.0)]
    sigmoid_scale: f64,
    /// Smallest timestep (0-1000).
    #[arg(long = "min_timestep", alias = "min-timestep", default_value_t = 0.0)]
    min_timestep: f64,
    /// Largest timestep (0-1000).
    #[arg(
        long = "max_timestep",
        alias = "max-timestep",
        default_value_t = 1000.0
    )]
    max_timestep: f64,
    /// Also write the training state (`{output_name}-state`) at the end.
    #[arg(long = "save_state", alias = "save-state")]
    save_state: bool,
    /// Continue from a state written by --save_state.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Accepted for musubi command lines and ignored: attention runs on wanrt's own kernels.
    #[arg(long)]
    sdpa: bool,
    /// Accepted for musubi command lines and ignored: the CPU computes in f32.
    #[arg(long = "mixed_precision", alias = "mixed-precision")]
    mixed_precision: Option<String>,
    /// Accepted for musubi command lines: wanrt always checkpoints per block.
    #[arg(long = "gradient_checkpointing", alias = "gradient-checkpointing")]
    gradient_checkpointing: bool,
    /// Accepted for musubi command lines: the base weights are used in their stored dtype.
    #[arg(long = "fp8_base", alias = "fp8-base")]
    fp8_base: bool,
}

/// Runs `wanrt train`; false on failure (reported on stderr).
pub fn run(args: &TrainArgs) -> bool {
    match std::panic::catch_unwind(|| train(args)) {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            eprintln!("error: {e}");
            false
        }
        Err(panic) => {
            let msg = wanrt::error::panic_message(panic.as_ref()).unwrap_or("unknown");
            eprintln!("error: internal error (a bug in wanrt): {msg}");
            false
        }
    }
}

fn train(a: &TrainArgs) -> Result<()> {
    for (set, note) in [
        (a.sdpa, "--sdpa is ignored (wanrt's own attention)"),
        (
            a.mixed_precision.is_some(),
            "--mixed_precision is ignored (f32 compute on the CPU)",
        ),
        (
            a.gradient_checkpointing,
            "--gradient_checkpointing is always on",
        ),
        (
            a.fp8_base,
            "--fp8_base: the base weights are used as stored",
        ),
    ] {
        if set {
            eprintln!("note: {note}");
        }
    }
    let cfg = TrainConfig {
        network_dim: a.network_dim,
        network_alpha: a.network_alpha,
        learning_rate: a.learning_rate,
        lr_scheduler: Scheduler::parse(&a.lr_scheduler)?,
        lr_warmup_steps: a.lr_warmup_steps,
        max_train_steps: a.max_train_steps,
        max_train_epochs: a.max_train_epochs,
        max_grad_norm: a.max_grad_norm,
        seed: a.seed,
        timesteps: Timesteps {
            sampling: TimestepSampling::parse(&a.timestep_sampling)?,
            sigmoid_scale: a.sigmoid_scale,
            discrete_flow_shift: a.discrete_flow_shift,
            min_timestep: a.min_timestep,
            max_timestep: a.max_timestep,
        },
        ..TrainConfig::default()
    };
    let dit = WanDit::open(&a.dit, a.dit_config.as_deref())?;
    let items = list_items(&a.cache_directory)?;
    let mut trainer = match &a.resume {
        Some(dir) => Trainer::resume(dit, items, cfg, dir)?,
        None => Trainer::new(dit, items, cfg)?,
    };
    std::fs::create_dir_all(&a.output_dir).map_err(|e| wanrt::Error::io(&a.output_dir, e))?;
    let total = trainer.total_steps();
    while !trainer.is_done() {
        let r = trainer.step()?;
        eprintln!(
            "step {}/{total} epoch {} loss {:.6} lr {:.3e}",
            r.step, r.epoch, r.loss, r.lr
        );
    }
    let out = a.output_dir.join(format!("{}.safetensors", a.output_name));
    trainer.save_lora(&out)?;
    if a.save_state {
        trainer.save_state(&a.output_dir.join(format!("{}-state", a.output_name)))?;
    }
    println!("{}", out.display());
    Ok(())
}
