//! The `wanrt` command line.
//!
//! One subcommand per job (`inspect`, `generate`, `lora merge`, `bench`, `devices`, `train`). Errors are reported as one line, `error: <path>: <what>`, and a non-zero
//! exit code; never as a panic or a backtrace.

mod bench;
mod cache;
mod devices;
mod generate;
mod lora;
mod report;
mod train;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use wanrt::io;

/// Wan2.1 text-to-video on CPU and CUDA.
#[derive(Parser)]
#[command(name = "wanrt", version, about)]
struct Cli {
    /// Worker threads for any subcommand (default: one per core).
    #[arg(long, global = true, value_name = "N", value_parser = parse_threads)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Describe model files (format, component, key layout, storage dtype, tensor counts) or
    /// wanrt's outputs (MP4, PNG, GIF: size, frames, frame rate, recorded generation parameters).
    Inspect {
        /// Model files (.safetensors, .pth), sharded model folders, or .mp4/.png/.gif outputs.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Generate a video from a prompt (`--demo` to try it without models).
    Generate(Box<generate::GenerateArgs>),
    /// LoRA tools (`wanrt lora merge`).
    Lora {
        #[command(subcommand)]
        command: lora::LoraCommand,
    },
    /// Train a LoRA of the DiT on musubi cache files (musubi's flag names).
    Train(Box<wanrt::train::TrainOptions>),
    /// Write musubi cache files from a dataset TOML (`wanrt cache latents`, `wanrt cache text`).
    Cache {
        #[command(subcommand)]
        command: cache::CacheCommand,
    },
    /// Time a model component on random weights (llama-bench style: markdown or --json).
    Bench {
        #[command(subcommand)]
        target: bench::Target,
    },
    /// List the CUDA devices (index, name, compute capability, memory).
    Devices {
        /// Print one JSON array instead of lines.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    // A bug must still end as one `error:` line: silence the default panic report, which
    // `catch_unwind` below turns into that line.
    std::panic::set_hook(Box::new(|_| {}));
    // The library's warnings (ignored LoRA keys, ...) as `warning:` lines; `main` runs once.
    if log::set_logger(&StderrLogger).is_ok() {
        log::set_max_level(log::LevelFilter::Warn);
    }
    let cli = Cli::parse();
    if let Some(n) = cli.threads {
        // The process runs one job: rayon's global pool is its pool.
        if let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
        {
            eprintln!("error: --threads {n}: {e}");
            return ExitCode::FAILURE;
        }
    }
    let ok = match cli.command {
        Command::Inspect { files } => inspect(&files),
        Command::Generate(args) => generate::run(&args),
        Command::Lora { command } => lora::run(&command),
        Command::Bench { target } => bench::run(target),
        Command::Train(args) => train::run(&args),
        Command::Cache { command } => cache::run(&command),
        Command::Devices { json } => devices::run(json),
    };
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// A thread count, at least 1.
fn parse_threads(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) | Err(_) => {
            Err("--threads must be at least 1 (leave it out for one per core)".into())
        }
        Ok(n) => Ok(n),
    }
}

/// Describes every file; returns false when any failed (the others are still described).
fn inspect(files: &[PathBuf]) -> bool {
    let mut ok = true;
    for path in files {
        let subject = format!("{}: ", path.display());
        match report::reported(&subject, || {
            describe(path).map_err(|e| without_path(&e, path))
        }) {
            Some(summary) => {
                println!("{}", path.display());
                for line in summary.lines() {
                    println!("  {line}");
                }
            }
            None => ok = false,
        }
    }
    ok
}

/// A video output or a model file, in lines.
fn describe(path: &Path) -> wanrt::Result<String> {
    if wanrt::video::sniff(path)?.is_some() {
        return Ok(wanrt::video::probe(path)?.to_string());
    }
    Ok(io::describe::summarize(&io::open(path)?)?.to_string())
}

/// The error message, minus its leading path when that is the path already printed.
fn without_path(e: &wanrt::Error, path: &Path) -> String {
    let msg = e.to_string();
    let prefix = format!("{}: ", path.display());
    match msg.strip_prefix(&prefix) {
        Some(rest) => rest.to_string(),
        None => msg,
    }
}

/// Writes the library's log records of level warning and above to stderr, one line each.
struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::Level::Warn
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            let label = match record.level() {
                log::Level::Error => "error",
                _ => "warning",
            };
            eprintln!("{label}: {}", record.args());
        }
    }

    fn flush(&self) {}
}
