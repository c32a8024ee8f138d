//! `wanrt bench`: times one piece of the model on random weights, like llama-bench.
//!
//! Targets: `dit-block` (one transformer block of the DiT, its real code), `dit` (a whole
//! forward of a real config, optionally cut to fewer layers), `attention`, `gemm`, and
//! `pipeline` (a whole generation, timed per stage: see [`pipeline`]).
//! Setting up (random weights and inputs) is not timed, nor are the `--warmup` runs; each of the
//! `--iters` timed runs is one call of the op, whose output is then dropped. The report is a
//! markdown row (mean ± sd, median, min) or, with `--json`, one JSON object with every sample.
//! `peak_rss_mb` is the process's peak resident memory (Linux `VmHWM`): weights, inputs and the
//! op's working memory together. `attention` and `dit` take `--attention` (an attention choice
//! by name, default `bf16`); `attention` also reports TOPS (`4·L_q·L_kv·d` per head per second,
//! `tops` in the JSON), the 8-bit kernel's quantization pre-pass included in its time.
//!
//! With `--device cuda` the weights are uploaded in their stored dtype and the inputs in the
//! CUDA backend's dtypes (bf16 activations) before timing; each timed run ends with a
//! synchronisation of the device's stream, so it measures the GPU's work. `dit-block` and `dit`
//! go through the op layer, so an op without a CUDA kernel yet fails with its typed error.

mod pipeline;
mod targets;

use std::time::Instant;

use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;
use serde_json::{Map, Value};
use wanrt::backend::{cuda, Device};
use wanrt::{Error, Result, Tensor};

/// What to time.
#[derive(Subcommand, Debug)]
pub enum Target {
    /// One DiT transformer block (self-attention, cross-attention, FFN) with random weights.
    DitBlock {
        #[command(flatten)]
        shape: targets::BlockShape,
        #[command(flatten)]
        common: Common,
    },
    /// A whole DiT forward (embeddings, blocks, head) of a real config with random weights.
    Dit {
        #[command(flatten)]
        shape: targets::DitShape,
        #[command(flatten)]
        common: Common,
    },
    /// Self-attention `softmax(q kᵀ / sqrt(d)) v` over `--tokens` tokens.
    Attention {
        #[command(flatten)]
        shape: targets::AttentionShape,
        #[command(flatten)]
        common: Common,
    },
    /// A linear layer `x Wᵀ + b` with the weight stored in `--dtype`.
    Gemm {
        #[command(flatten)]
        shape: targets::GemmShape,
        #[command(flatten)]
        common: Common,
    },
    /// A whole generation (text encoding, sampling steps, VAE decode) through the pipeline,
    /// with random weights of a real config: per-stage times, peak memory, the plan.
    Pipeline {
        #[command(flatten)]
        args: pipeline::PipelineArgs,
    },
}

/// Flags every target takes.
#[derive(Args, Debug)]
pub struct Common {
    /// Where to run.
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    device: DeviceArg,
    /// Untimed runs before the timed ones.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Timed runs (at least 1).
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// Print one JSON object instead of a markdown row.
    #[arg(long)]
    json: bool,
}

/// The devices `--device` names.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum DeviceArg {
    Cpu,
    /// The first CUDA device.
    Cuda,
}

impl DeviceArg {
    fn device(self) -> Device {
        match self {
            DeviceArg::Cpu => Device::Cpu,
            DeviceArg::Cuda => Device::Cuda(0),
        }
    }
}

/// Waits for the work queued on `device` (nothing to wait for on the CPU).
fn finish(device: Device) -> Result<()> {
    match device {
        Device::Cpu => Ok(()),
        Device::Cuda(ordinal) => cuda::synchronize(ordinal),
    }
}

/// A prepared benchmark: its description and the op to time.
pub struct Prepared {
    /// Target name as typed (`dit-block`).
    target: &'static str,
    /// Shape parameters, in the order they are printed.
    shape: Vec<(&'static str, Value)>,
    /// The weight storage dtype.
    dtype: String,
    /// Floating-point operations of one run (matrix products only), for GFLOP/s.
    flop: f64,
    /// Whether `flop` is an attention's `4·L_q·L_kv·d` per head, which is also reported as
    /// TOPS (tera-operations per second: integer ones too, on the 8-bit kernel).
    attention_ops: bool,
    /// One run of the op.
    run: Box<dyn FnMut() -> Result<Tensor>>,
}

/// The record printed for one benchmark (llama-bench's `struct test`).
#[derive(Serialize)]
struct Record {
    target: &'static str,
    shape: Map<String, Value>,
    dtype: String,
    device: String,
    threads: usize,
    warmup: usize,
    iters: usize,
    mean_ms: f64,
    sd_ms: f64,
    median_ms: f64,
    min_ms: f64,
    max_ms: f64,
    samples_ms: Vec<f64>,
    /// CPU time (user + system, all threads) per timed run: steadier than wall time on a
    /// shared machine, where other processes take cores away.
    cpu_ms: f64,
    /// Minor page faults per timed run: first touches of freshly mapped memory.
    minor_faults: f64,
    gflop: f64,
    gflops: f64,
    tflops: f64,
    /// Attention TOPS (`4·L_q·L_kv·d` per head, per second at the median), for the `attention`
    /// target only.
    #[serde(skip_serializing_if = "Option::is_none")]
    tops: Option<f64>,
    peak_rss_mb: f64,
    cpu: String,
    version: &'static str,
}

/// Runs `wanrt bench`; returns false (after printing `error: ...`) on failure.
pub fn run(target: Target) -> bool {
    crate::report::reported("bench: ", || bench(target)).is_some()
}

fn bench(target: Target) -> Result<()> {
    let (shape, common): (&dyn targets::Prepare, &Common) = match &target {
        Target::DitBlock { shape, common } => (shape, common),
        Target::Dit { shape, common } => (shape, common),
        Target::Attention { shape, common } => (shape, common),
        Target::Gemm { shape, common } => (shape, common),
        Target::Pipeline { args } => return pipeline::bench(args),
    };
    let device = common.device.device();
    if device != Device::Cpu {
        cuda::device_available()?;
    }
    if common.iters == 0 {
        return Err(Error::InvalidArgument("--iters must be at least 1".into()));
    }
    let mut p = shape.prepare(device)?;
    for _ in 0..common.warmup {
        drop((p.run)()?);
    }
    finish(device)?;
    let mut samples = Vec::with_capacity(common.iters);
    let (cpu0, faults0) = cpu_and_faults();
    for _ in 0..common.iters {
        let start = Instant::now();
        let out = (p.run)()?;
        finish(device)?;
        samples.push(start.elapsed().as_secs_f64() * 1e3);
        drop(out);
    }
    let (cpu1, faults1) = cpu_and_faults();
    let per_iter = |a: f64, b: f64| (b - a) / common.iters as f64;
    let counters = (per_iter(cpu0, cpu1), per_iter(faults0, faults1));
    let record = record(&p, common, device, samples, counters);
    if common.json {
        let text = serde_json::to_string(&record)
            .map_err(|e| Error::InvalidArgument(format!("json: {e}")))?;
        println!("{text}");
    } else {
        print_markdown(&p, &record);
    }
    Ok(())
}

/// The record of `samples` (wall ms) with `(cpu_ms, minor_faults)` per run.
fn record(
    p: &Prepared,
    common: &Common,
    device: Device,
    samples: Vec<f64>,
    counters: (f64, f64),
) -> Record {
    let n = samples.len() as f64;
    let mean = samples.iter().sum::<f64>() / n;
    let var = samples.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    let mut sorted = samples.clone();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    let median = if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    };
    Record {
        target: p.target,
        shape: p
            .shape
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        dtype: p.dtype.clone(),
        device: device.to_string(),
        threads: rayon::current_num_threads(),
        warmup: common.warmup,
        iters: common.iters,
        mean_ms: mean,
        sd_ms: var.sqrt(),
        median_ms: median,
        min_ms: sorted[0],
        max_ms: sorted[sorted.len() - 1],
        samples_ms: samples,
        cpu_ms: counters.0,
        minor_faults: counters.1,
        gflop: p.flop / 1e9,
        gflops: p.flop / 1e9 / (median / 1e3),
        tflops: p.flop / 1e12 / (median / 1e3),
        tops: p.attention_ops.then_some(p.flop / 1e12 / (median / 1e3)),
        peak_rss_mb: peak_rss_mb(),
        cpu: cpu_name(),
        version: env!("CARGO_PKG_VERSION"),
    }
}

fn print_markdown(p: &Prepared, r: &Record) {
    let shape = p
        .shape
        .iter()
        .map(|(k, v)| format!("{k}={v}").replace('"', ""))
        .collect::<Vec<_>>()
        .join(" ");
    let tops = r.tops.map_or(String::new(), |t| format!(" {t:.2} |"));
    let (tops_head, tops_rule) = match r.tops {
        Some(_) => (" TOPS |", " ---: |"),
        None => ("", ""),
    };
    println!("| target | shape | dtype | device | threads | iters | mean ± sd (ms) | median (ms) | min (ms) | GFLOP/s | TFLOP/s |{tops_head} peak RSS (MB) |");
    println!("| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |{tops_rule} ---: |");
    println!(
        "| {} | {shape} | {} | {} | {} | {} | {:.2} ± {:.2} | {:.2} | {:.2} | {:.1} | {:.2} |{tops} {:.0} |",
        r.target,
        r.dtype,
        r.device,
        r.threads,
        r.iters,
        r.mean_ms,
        r.sd_ms,
        r.median_ms,
        r.min_ms,
        r.gflops,
        r.tflops,
        r.peak_rss_mb
    );
}

/// `(CPU time in ms, minor page faults)` of this process so far, from `/proc/self/stat`; zeros
/// where unknown. utime and stime are in clock ticks, which Linux fixes at 100 per second
/// for user space.
fn cpu_and_faults() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name, from field 3: minflt is field 10, utime
    // and stime fields 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let field = |i: usize| {
        rest.split_whitespace()
            .nth(i - 3)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    ((field(14) + field(15)) * 10.0, field(10))
}

/// Peak resident memory of this process so far (Linux `VmHWM`), in MiB; 0 where unknown.
fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// The CPU model from `/proc/cpuinfo`, or `unknown`.
fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}
