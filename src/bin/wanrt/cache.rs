//! `wanrt cache latents` and `wanrt cache text`: musubi-tuner's `wan_cache_latents.py` and
//! `wan_cache_text_encoder_outputs.py` over a dataset TOML, with musubi's flag names
//! (`--dataset_config` and `--dataset-config` alike).

use std::path::PathBuf;

use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use wanrt::model::t5::TextEncoder;
use wanrt::model::vae::WanVae;
use wanrt::pipeline::ModelSource;
use wanrt::train::caching::{self, CacheReport};
use wanrt::train::dataset::DatasetConfig;
use wanrt::Result;

/// What to cache.
#[derive(Subcommand)]
pub enum CacheCommand {
    /// Encode every image and clip window of the dataset with the VAE (latent caches).
    Latents(LatentArgs),
    /// Encode every caption of the dataset with UMT5 (text-encoder caches).
    Text(TextArgs),
}

/// The flags both commands share.
#[derive(Args)]
pub struct Common {
    /// The musubi-tuner dataset TOML.
    #[arg(long = "dataset_config", alias = "dataset-config")]
    dataset_config: PathBuf,
    /// A model folder (official Wan-AI or ComfyUI) to take the model files from.
    #[arg(long)]
    models: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

/// Arguments of `wanrt cache latents`.
#[derive(Args)]
pub struct LatentArgs {
    #[command(flatten)]
    common: Common,
    /// The Wan VAE.
    #[arg(long)]
    vae: Option<PathBuf>,
    /// A VAE `config.json`.
    #[arg(long = "vae-config", alias = "vae_config")]
    vae_config: Option<PathBuf>,
    /// Accepted for musubi command lines and ignored: the VAE runs on the CPU.
    #[arg(long = "vae_cache_cpu", alias = "vae-cache-cpu")]
    vae_cache_cpu: bool,
}

/// Arguments of `wanrt cache text`.
#[derive(Args)]
pub struct TextArgs {
    #[command(flatten)]
    common: Common,
    /// The UMT5 text encoder.
    #[arg(long)]
    t5: Option<PathBuf>,
    /// A UMT5 `config.json`.
    #[arg(long = "t5-config", alias = "t5_config")]
    t5_config: Option<PathBuf>,
    /// The UMT5 `tokenizer.json`.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Accepted for musubi command lines and ignored: captions are encoded one at a time.
    #[arg(long = "batch_size", alias = "batch-size")]
    batch_size: Option<usize>,
}

/// Runs `wanrt cache …`; false on failure (reported on stderr).
pub fn run(command: &CacheCommand) -> bool {
    crate::report::reported("", || match command {
        CacheCommand::Latents(a) => latents(a),
        CacheCommand::Text(a) => text(a),
    })
    .is_some()
}

/// The files given one by one win; the rest come from `--models`.
fn resolve(
    common: &Common,
    given: Option<&PathBuf>,
    pick: fn(wanrt::pipeline::ModelFiles) -> PathBuf,
    flag: &str,
) -> Result<PathBuf> {
    match (given, &common.models) {
        (Some(p), _) => Ok(p.clone()),
        (None, Some(dir)) => Ok(pick(
            ModelSource {
                models_dir: Some(dir.clone()),
                ..ModelSource::default()
            }
            .resolve()?,
        )),
        (None, None) => Err(wanrt::Error::InvalidArgument(format!(
            "pass {flag} FILE, or a model folder (--models DIR)"
        ))),
    }
}

fn latents(a: &LatentArgs) -> Result<()> {
    if a.vae_cache_cpu {
        eprintln!("note: --vae_cache_cpu is ignored (the VAE runs on the CPU)");
    }
    let config = DatasetConfig::load(&a.common.dataset_config)?;
    let vae_path = resolve(&a.common, a.vae.as_ref(), |f| f.vae, "--vae")?;
    let vae = WanVae::open(&vae_path, a.vae_config.as_deref())?;
    finish(with_bar(a.common.quiet, "latents", |p| {
        caching::cache_latents(&config, &vae, p)
    })?)
}

fn text(a: &TextArgs) -> Result<()> {
    if a.batch_size.is_some() {
        eprintln!("note: --batch_size is ignored (captions are encoded one at a time)");
    }
    let config = DatasetConfig::load(&a.common.dataset_config)?;
    let t5 = resolve(&a.common, a.t5.as_ref(), |f| f.t5, "--t5")?;
    let tokenizer = resolve(
        &a.common,
        a.tokenizer.as_ref(),
        |f| f.tokenizer,
        "--tokenizer",
    )?;
    let encoder = TextEncoder::open(&t5, a.t5_config.as_deref(), &tokenizer)?;
    finish(with_bar(a.common.quiet, "captions", |p| {
        caching::cache_text(&config, &encoder, p)
    })?)
}

/// Runs `job` with a progress bar over its media files (hidden with `quiet`).
fn with_bar(
    quiet: bool,
    what: &'static str,
    job: impl FnOnce(&mut dyn FnMut(usize, usize)) -> Result<CacheReport>,
) -> Result<CacheReport> {
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
    };
    bar.set_style(
        ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} [{elapsed} < {eta}]")
            .expect("a valid template"),
    );
    bar.set_message(format!("caching {what}"));
    let report = job(&mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    });
    bar.finish_and_clear();
    report
}

/// Prints the report; a dataset that yields no item at all is an error.
fn finish(report: CacheReport) -> Result<()> {
    eprintln!("{report}");
    if report.any_item() {
        Ok(())
    } else {
        Err(wanrt::Error::InvalidArgument(
            "nothing was cached: the dataset has no usable item (see the skipped files above)"
                .into(),
        ))
    }
}
