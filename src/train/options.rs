//! musubi-tuner's `wan_train_network.py` command line, as `wanrt train` and the C ABI's
//! trainer read it: the flags wanrt implements (each in both spellings, `--network_dim` and
//! `--network-dim`), the flags it accepts and ignores or maps (each reported by
//! [`TrainOptions::notes`]), and the flags whose other values it refuses. A flag musubi does
//! not have either is an error.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{Args, Parser};

use super::cache::{dataset_items, list_items, CacheItem};
use super::dataset::DatasetConfig;
use super::network::LoraNetwork;
use super::optim::Scheduler;
use super::run::{Outputs, TrainingRun};
use super::samples::{read_sample_prompts, Samples};
use super::{TimestepSampling, Timesteps, TrainConfig, Trainer};
use crate::error::{Error, Result};
use crate::lora::Lora;
use crate::model::dit::WanDit;
use crate::pipeline::ModelSource;

/// The options of a training run (`wanrt train --help` lists them).
#[derive(Args, Debug, Clone)]
pub struct TrainOptions {
    /// The base DiT: a file or a sharded folder, in any layout and dtype (kept as stored).
    #[arg(long)]
    pub dit: Option<PathBuf>,
    /// A model folder (the official Wan-AI folder or ComfyUI's models/ tree) for the files not
    /// given one by one.
    #[arg(long)]
    pub models: Option<PathBuf>,
    /// The VAE (for --sample_prompts).
    #[arg(long)]
    pub vae: Option<PathBuf>,
    /// A VAE `config.json`.
    #[arg(long = "vae-config", alias = "vae_config")]
    pub vae_config: Option<PathBuf>,
    /// The UMT5 text encoder (for --sample_prompts).
    #[arg(long)]
    pub t5: Option<PathBuf>,
    /// A UMT5 `config.json`.
    #[arg(long = "t5-config", alias = "t5_config")]
    pub t5_config: Option<PathBuf>,
    /// The UMT5 `tokenizer.json` (for --sample_prompts).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// A `.txt` file of sample prompts, one per line with musubi's options (`--w --h --f --d
    /// --s --l --fs --n`); the videos go to `{output_dir}/sample/`.
    #[arg(long = "sample_prompts", alias = "sample-prompts")]
    pub sample_prompts: Option<PathBuf>,
    /// Make the samples every N steps.
    #[arg(long = "sample_every_n_steps", alias = "sample-every-n-steps")]
    pub sample_every_n_steps: Option<usize>,
    /// Make the samples every N epochs.
    #[arg(long = "sample_every_n_epochs", alias = "sample-every-n-epochs")]
    pub sample_every_n_epochs: Option<usize>,
    /// A Wan `config.json` for the DiT (otherwise inferred from the shapes).
    #[arg(long = "dit-config", alias = "dit_config")]
    pub dit_config: Option<PathBuf>,
    /// The folder of musubi latent and text-encoder caches (`*_wan.safetensors`,
    /// `*_wan_te.safetensors`); or give --dataset_config instead.
    #[arg(long = "cache_directory", alias = "cache-directory")]
    pub cache_directory: Option<PathBuf>,
    /// musubi's dataset TOML: the items are those cached in every dataset's `cache_directory`,
    /// each `num_repeats` times per epoch (`batch_size` is not used: one item per step).
    /// Excludes --cache_directory.
    #[arg(
        long = "dataset_config",
        alias = "dataset-config",
        conflicts_with = "cache_directory",
        required_unless_present = "cache_directory"
    )]
    pub dataset_config: Option<PathBuf>,
    /// Where the LoRAs, states and metrics are written.
    #[arg(long = "output_dir", alias = "output-dir")]
    pub output_dir: PathBuf,
    /// The LoRA's file name, without `.safetensors`.
    #[arg(long = "output_name", alias = "output-name")]
    pub output_name: String,
    /// LoRA rank.
    #[arg(long = "network_dim", alias = "network-dim", default_value_t = 4)]
    pub network_dim: usize,
    /// LoRA alpha (scale = alpha / rank).
    #[arg(long = "network_alpha", alias = "network-alpha", default_value_t = 1.0)]
    pub network_alpha: f32,
    /// A LoRA file (musubi's format, rank and alpha its own) to continue training.
    #[arg(long = "network_weights", alias = "network-weights")]
    pub network_weights: Option<PathBuf>,
    /// Only `networks.lora_wan` (musubi's Wan LoRA module).
    #[arg(long = "network_module", alias = "network-module")]
    pub network_module: Option<String>,
    /// Peak learning rate.
    #[arg(
        long = "learning_rate",
        alias = "learning-rate",
        default_value_t = 2e-6
    )]
    pub learning_rate: f32,
    /// AdamW (AdamW8bit is mapped to AdamW with f32 states).
    #[arg(long = "optimizer_type", alias = "optimizer-type")]
    pub optimizer_type: Option<String>,
    /// constant, constant_with_warmup or cosine.
    #[arg(
        long = "lr_scheduler",
        alias = "lr-scheduler",
        default_value = "constant"
    )]
    pub lr_scheduler: String,
    /// Warmup steps.
    #[arg(
        long = "lr_warmup_steps",
        alias = "lr-warmup-steps",
        default_value_t = 0
    )]
    pub lr_warmup_steps: usize,
    /// Steps to train (overridden by --max_train_epochs).
    #[arg(
        long = "max_train_steps",
        alias = "max-train-steps",
        default_value_t = 1600
    )]
    pub max_train_steps: usize,
    /// Epochs to train.
    #[arg(long = "max_train_epochs", alias = "max-train-epochs")]
    pub max_train_epochs: Option<usize>,
    /// Only 1 (wanrt steps on every batch).
    #[arg(
        long = "gradient_accumulation_steps",
        alias = "gradient-accumulation-steps",
        default_value_t = 1
    )]
    pub gradient_accumulation_steps: usize,
    /// Gradient clipping by global norm (0 disables).
    #[arg(long = "max_grad_norm", alias = "max-grad-norm", default_value_t = 1.0)]
    pub max_grad_norm: f64,
    /// Seed of the initialisation, the item order, the noise and the timesteps.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// sigma, uniform, sigmoid or shift.
    #[arg(
        long = "timestep_sampling",
        alias = "timestep-sampling",
        default_value = "sigma"
    )]
    pub timestep_sampling: String,
    /// The shift of `--timestep_sampling shift`.
    #[arg(
        long = "discrete_flow_shift",
        alias = "discrete-flow-shift",
        default_value_t = 1.0
    )]
    pub discrete_flow_shift: f64,
    /// The scale of the sigmoid and shift samplers.
    #[arg(long = "sigmoid_scale", alias = "sigmoid-scale", default_value_t = 1.0)]
    pub sigmoid_scale: f64,
    /// Smallest timestep (0-1000).
    #[arg(long = "min_timestep", alias = "min-timestep", default_value_t = 0.0)]
    pub min_timestep: f64,
    /// Largest timestep (0-1000).
    #[arg(
        long = "max_timestep",
        alias = "max-timestep",
        default_value_t = 1000.0
    )]
    pub max_timestep: f64,
    /// Save `{output_name}-step{N:08}.safetensors` every N steps.
    #[arg(long = "save_every_n_steps", alias = "save-every-n-steps")]
    pub save_every_n_steps: Option<usize>,
    /// Save `{output_name}-{N:06}.safetensors` every N epochs (not after the last).
    #[arg(long = "save_every_n_epochs", alias = "save-every-n-epochs")]
    pub save_every_n_epochs: Option<usize>,
    /// Also write the training state (`{file}-state`) next to every LoRA saved.
    #[arg(long = "save_state", alias = "save-state")]
    pub save_state: bool,
    /// Continue from a state written by --save_state.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Only fp32 (float), musubi's default: the LoRA is saved in f32.
    #[arg(long = "save_precision", alias = "save-precision")]
    pub save_precision: Option<String>,
    /// Write the loss curve as a PNG here at the end (the metrics are always written to
    /// `{output_dir}/{output_name}-metrics.jsonl`).
    #[arg(long = "loss_curve", alias = "loss-curve")]
    pub loss_curve: Option<PathBuf>,
    /// The LoRA's trigger phrase (`modelspec.trigger_phrase`).
    #[arg(long = "metadata_trigger_phrase", alias = "metadata-trigger-phrase")]
    pub metadata_trigger_phrase: Option<String>,
    /// `modelspec.title` (default: the output name).
    #[arg(long = "metadata_title", alias = "metadata-title")]
    pub metadata_title: Option<String>,
    /// `modelspec.author`.
    #[arg(long = "metadata_author", alias = "metadata-author")]
    pub metadata_author: Option<String>,
    /// `modelspec.description`.
    #[arg(long = "metadata_description", alias = "metadata-description")]
    pub metadata_description: Option<String>,
    /// `modelspec.license`.
    #[arg(long = "metadata_license", alias = "metadata-license")]
    pub metadata_license: Option<String>,
    /// `modelspec.tags`.
    #[arg(long = "metadata_tags", alias = "metadata-tags")]
    pub metadata_tags: Option<String>,
    /// Accepted and ignored: wanrt's own attention kernels run.
    #[arg(long)]
    pub sdpa: bool,
    /// Accepted and ignored: wanrt's own attention kernels run.
    #[arg(long = "flash_attn", alias = "flash-attn")]
    pub flash_attn: bool,
    /// Accepted and ignored: wanrt's own attention kernels run.
    #[arg(long = "sage_attn", alias = "sage-attn")]
    pub sage_attn: bool,
    /// Accepted and ignored: wanrt's own attention kernels run.
    #[arg(long)]
    pub xformers: bool,
    /// Accepted and ignored: wanrt's own attention kernels run.
    #[arg(long = "split_attn", alias = "split-attn")]
    pub split_attn: bool,
    /// Accepted and ignored: the CPU computes in f32.
    #[arg(long = "mixed_precision", alias = "mixed-precision")]
    pub mixed_precision: Option<String>,
    /// Accepted: wanrt always checkpoints per block.
    #[arg(long = "gradient_checkpointing", alias = "gradient-checkpointing")]
    pub gradient_checkpointing: bool,
    /// Accepted: the base weights are used in their stored dtype (an fp8 file stays fp8).
    #[arg(long = "fp8_base", alias = "fp8-base")]
    pub fp8_base: bool,
    /// Accepted: the task is read from the DiT's shapes or config (T2V only).
    #[arg(long)]
    pub task: Option<String>,
    /// Accepted and ignored: items are read on the training thread.
    #[arg(
        long = "max_data_loader_n_workers",
        alias = "max-data-loader-n-workers"
    )]
    pub max_data_loader_n_workers: Option<usize>,
    /// Accepted and ignored: items are read on the training thread.
    #[arg(
        long = "persistent_data_loader_workers",
        alias = "persistent-data-loader-workers"
    )]
    pub persistent_data_loader_workers: bool,
    /// Accepted and ignored: metrics go to `{output_name}-metrics.jsonl`.
    #[arg(long = "log_with", alias = "log-with")]
    pub log_with: Option<String>,
    /// Accepted and ignored: metrics go to `{output_name}-metrics.jsonl`.
    #[arg(long = "logging_dir", alias = "logging-dir")]
    pub logging_dir: Option<PathBuf>,
    /// Accepted and ignored: the CPU keeps every block in memory.
    #[arg(long = "blocks_to_swap", alias = "blocks-to-swap")]
    pub blocks_to_swap: Option<usize>,
}

/// `TrainOptions` as a whole command line (for an argument list given through the C ABI).
#[derive(Parser)]
#[command(name = "wanrt train", no_binary_name = true, disable_help_flag = true)]
struct Line {
    #[command(flatten)]
    options: TrainOptions,
}

/// What wanrt does with a musubi flag that it accepts without honouring it as musubi does.
enum Action<'a> {
    /// Ignored, for the reason given.
    Ignored(&'a str),
    /// Honoured another way, the way given.
    Mapped(&'a str),
}

/// A flag that wanrt supports with some values only: its name, the value given (if any),
/// whether wanrt supports that value, and the values it supports.
type Restricted = (&'static str, Option<String>, fn(&str) -> bool, &'static str);

impl TrainOptions {
    /// Reads a `wanrt train` argument list (without the program and subcommand names). A
    /// malformed or unknown flag is an [`Error::InvalidArgument`] with clap's message.
    pub fn parse<I, S>(args: I) -> Result<TrainOptions>
    where
        I: IntoIterator<Item = S>,
        S: Into<std::ffi::OsString> + Clone,
    {
        Line::try_parse_from(args)
            .map(|l| l.options)
            .map_err(|e| Error::InvalidArgument(e.render().to_string().trim_end().to_string()))
    }

    /// One line for each musubi flag given that wanrt ignores or maps.
    pub fn notes(&self) -> Vec<String> {
        use Action::{Ignored, Mapped};
        let attention = self.sdpa || self.flash_attn || self.sage_attn || self.xformers;
        let workers =
            self.max_data_loader_n_workers.is_some() || self.persistent_data_loader_workers;
        let logging = self.log_with.is_some() || self.logging_dir.is_some();
        let optimizer = self.optimizer_type.as_deref().map(str::to_lowercase);
        let batched = self
            .dataset_config
            .as_deref()
            .and_then(|toml| DatasetConfig::load(toml).ok())
            .is_some_and(|c| c.datasets.iter().any(|d| d.batch_size > 1));
        let metrics = format!("metrics: {}", self.outputs().metrics_path().display());
        #[rustfmt::skip] // one row a flag
        let flags = [
            (attention, "--sdpa/--flash_attn/--sage_attn/--xformers", Ignored("wanrt's own attention")),
            (self.split_attn, "--split_attn", Ignored("wanrt's own attention")),
            (self.mixed_precision.is_some(), "--mixed_precision", Ignored("f32 compute on the CPU")),
            (self.gradient_checkpointing, "--gradient_checkpointing", Mapped("always on (per block)")),
            (self.fp8_base, "--fp8_base", Mapped("the base weights are used as stored (an fp8 file stays fp8, a bf16 one bf16)")),
            (self.task.is_some(), "--task", Ignored("the model comes from the DiT's shapes or --dit-config")),
            (workers, "--max_data_loader_n_workers/--persistent_data_loader_workers", Ignored("items are read on the training thread")),
            (logging, "--log_with/--logging_dir", Ignored(&metrics)),
            (self.blocks_to_swap.is_some(), "--blocks_to_swap", Ignored("every block stays in memory")),
            (optimizer.as_deref() == Some("adamw8bit"), "--optimizer_type AdamW8bit", Mapped("mapped to AdamW with f32 states")),
            (batched, "batch_size in --dataset_config", Ignored("one item per step: an epoch is items × num_repeats steps")),
        ];
        flags
            .into_iter()
            .filter(|(given, ..)| *given)
            .map(|(_, flag, action)| match action {
                Ignored(why) => format!("note: {flag} is ignored ({why})"),
                Mapped(how) => format!("note: {flag}: {how}"),
            })
            .collect()
    }

    /// The training settings, checking the flags whose values wanrt cannot honour.
    pub fn config(&self) -> Result<TrainConfig> {
        #[rustfmt::skip] // one row a flag
        let restricted: [Restricted; 5] = [
            ("network_module", self.network_module.clone(), |m| m == "networks.lora_wan", "networks.lora_wan"),
            ("optimizer_type", self.optimizer_type.clone(), |o| matches!(o.to_lowercase().as_str(), "adamw" | "adamw8bit" | "torch.optim.adamw"), "AdamW (and AdamW8bit, mapped to it)"),
            ("gradient_accumulation_steps", Some(self.gradient_accumulation_steps.to_string()), |n| n == "1", "1"),
            ("save_precision", self.save_precision.clone(), |p| matches!(p, "fp32" | "float"), "fp32 (float)"),
            ("task", self.task.clone(), |t| t.starts_with("t2v"), "the t2v tasks"),
        ];
        for (flag, value, is_supported, supported) in restricted {
            if let Some(value) = value.filter(|v| !is_supported(v)) {
                return Err(Error::InvalidArgument(format!(
                    "--{flag} `{value}`: wanrt supports {supported}"
                )));
            }
        }
        let mut metadata = BTreeMap::from([
            ("ss_output_name".to_string(), self.output_name.clone()),
            (
                "modelspec.title".to_string(),
                self.metadata_title
                    .clone()
                    .unwrap_or(self.output_name.clone()),
            ),
        ]);
        for (key, value) in [
            ("modelspec.trigger_phrase", &self.metadata_trigger_phrase),
            ("modelspec.author", &self.metadata_author),
            ("modelspec.description", &self.metadata_description),
            ("modelspec.license", &self.metadata_license),
            ("modelspec.tags", &self.metadata_tags),
        ] {
            if let Some(v) = value {
                metadata.insert(key.to_string(), v.clone());
            }
        }
        Ok(TrainConfig {
            network_dim: self.network_dim,
            network_alpha: self.network_alpha,
            learning_rate: self.learning_rate,
            lr_scheduler: Scheduler::parse(&self.lr_scheduler)?,
            lr_warmup_steps: self.lr_warmup_steps,
            max_train_steps: self.max_train_steps,
            max_train_epochs: self.max_train_epochs,
            max_grad_norm: self.max_grad_norm,
            seed: self.seed,
            timesteps: Timesteps {
                sampling: TimestepSampling::parse(&self.timestep_sampling)?,
                sigmoid_scale: self.sigmoid_scale,
                discrete_flow_shift: self.discrete_flow_shift,
                min_timestep: self.min_timestep,
                max_timestep: self.max_timestep,
            },
            metadata,
            ..TrainConfig::default()
        })
    }

    /// Where and when the run writes.
    pub fn outputs(&self) -> Outputs {
        Outputs {
            dir: self.output_dir.clone(),
            name: self.output_name.clone(),
            save_every_n_steps: self.save_every_n_steps,
            save_every_n_epochs: self.save_every_n_epochs,
            save_state: self.save_state,
            loss_curve: self.loss_curve.clone(),
        }
    }

    /// Opens the DiT and the caches and starts the run: fresh, from `--network_weights`, or
    /// from the state `--resume` names.
    pub fn start(&self) -> Result<TrainingRun> {
        let cfg = self.config()?;
        let source = ModelSource {
            models_dir: self.models.clone(),
            dit: self.dit.clone(),
            vae: self.vae.clone(),
            t5: self.t5.clone(),
            tokenizer: self.tokenizer.clone(),
            dit_config: self.dit_config.clone(),
            vae_config: self.vae_config.clone(),
            t5_config: self.t5_config.clone(),
        };
        let samples = self.samples(&source)?;
        let dit_path = match &self.dit {
            Some(p) => p.clone(),
            None => source.resolve()?.dit,
        };
        let dit = WanDit::open(&dit_path, self.dit_config.as_deref())?;
        let items = self.items()?;
        let trainer = match (&self.resume, &self.network_weights) {
            (Some(_), Some(_)) => return Err(Error::InvalidArgument(
                "--resume and --network_weights exclude each other (the state holds the network)"
                    .into(),
            )),
            (Some(dir), None) => Trainer::resume(dit, items, cfg, dir)?,
            (None, Some(file)) => {
                let net = LoraNetwork::from_lora(&Lora::open(file)?)?;
                Trainer::with_network(dit, items, cfg, net)?
            }
            (None, None) => Trainer::new(dit, items, cfg)?,
        };
        let run = TrainingRun::new(trainer, self.outputs())?;
        Ok(match samples {
            Some(s) => run.with_samples(s),
            None => run,
        })
    }

    /// The training items: those of every dataset of `--dataset_config` (see
    /// [`dataset_items`]) or those of `--cache_directory`.
    pub fn items(&self) -> Result<Vec<CacheItem>> {
        match (&self.dataset_config, &self.cache_directory) {
            (Some(toml), None) => dataset_items(&DatasetConfig::load(toml)?, toml),
            (None, Some(dir)) => list_items(dir),
            _ => Err(Error::InvalidArgument(
                "give either --dataset_config or --cache_directory (one, not both)".into(),
            )),
        }
    }

    /// The sample settings, when `--sample_prompts` is given (with every model file).
    fn samples(&self, source: &ModelSource) -> Result<Option<Samples>> {
        let every = (self.sample_every_n_steps, self.sample_every_n_epochs);
        if every.0 == Some(0) || every.1 == Some(0) {
            return Err(Error::InvalidArgument(
                "sample_every_n_steps and sample_every_n_epochs must be at least 1".into(),
            ));
        }
        let Some(file) = &self.sample_prompts else {
            if every != (None, None) {
                return Err(Error::InvalidArgument(
                    "--sample_every_n_steps/--sample_every_n_epochs need --sample_prompts".into(),
                ));
            }
            return Ok(None);
        };
        Ok(Some(Samples {
            files: source.resolve()?,
            prompts: read_sample_prompts(file)?,
            every_n_steps: every.0,
            every_n_epochs: every.1,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Vec<&'static str> {
        vec![
            "--dit",
            "d.safetensors",
            "--cache_directory",
            "c",
            "--output_dir",
            "o",
            "--output_name",
            "n",
        ]
    }

    #[test]
    fn both_spellings_parse_and_ignored_flags_are_noted() {
        let mut args = base();
        args.extend([
            "--network-dim",
            "8",
            "--network_alpha",
            "4",
            "--save-every-n-steps",
            "2",
            "--sdpa",
            "--mixed_precision",
            "bf16",
            "--optimizer_type",
            "adamw8bit",
            "--metadata_trigger_phrase",
            "ghibli style",
        ]);
        let o = TrainOptions::parse(args).unwrap();
        assert_eq!((o.network_dim, o.network_alpha), (8, 4.0));
        assert_eq!(o.outputs().save_every_n_steps, Some(2));
        let notes = o.notes();
        assert_eq!(notes.len(), 3, "{notes:?}");
        assert!(notes.iter().all(|n| n.starts_with("note: --")));
        let cfg = o.config().unwrap();
        assert_eq!(cfg.metadata["modelspec.trigger_phrase"], "ghibli style");
        assert_eq!(cfg.metadata["ss_output_name"], "n");
    }

    #[test]
    fn the_items_come_from_one_source() {
        let mut both = base();
        both.extend(["--dataset_config", "d.toml"]);
        let err = TrainOptions::parse(both).unwrap_err().to_string();
        assert!(err.contains("--dataset_config"), "{err}");
        let neither: Vec<_> = base()
            .into_iter()
            .filter(|a| *a != "--cache_directory" && *a != "c")
            .collect();
        let err = TrainOptions::parse(neither).unwrap_err().to_string();
        assert!(err.contains("--dataset_config"), "{err}");
        let mut toml = base();
        toml.splice(2..4, ["--dataset-config", "d.toml"]);
        let o = TrainOptions::parse(toml).unwrap();
        assert_eq!(o.dataset_config, Some(PathBuf::from("d.toml")));
        assert_eq!(o.cache_directory, None);
    }

    #[test]
    fn unknown_flags_and_unsupported_values_are_errors() {
        let mut args = base();
        args.push("--not_a_musubi_flag");
        let err = TrainOptions::parse(args).unwrap_err();
        assert!(err.to_string().contains("--not_a_musubi_flag"), "{err}");
        for (flag, value) in [
            ("--optimizer_type", "Adafactor"),
            ("--gradient_accumulation_steps", "4"),
            ("--save_precision", "bf16"),
            ("--network_module", "networks.lora"),
            ("--task", "i2v-14B"),
        ] {
            let mut args = base();
            args.extend([flag, value]);
            let err = TrainOptions::parse(args).unwrap().config().unwrap_err();
            assert!(err.to_string().contains(value), "{err}");
        }
    }
}
