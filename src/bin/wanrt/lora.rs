//! `wanrt lora merge`: bakes LoRAs into a DiT checkpoint, written back in the base file's own
//! key layout (ComfyUI prefix, diffusers names, scaled fp8 scales) so the result loads in any
//! tool that loaded the base.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use clap::{Args, Subcommand};
use wanrt::io::config::DitConfig;
use wanrt::io::layout::{self, Component, Quant, StoredName};
use wanrt::io::safetensors::TensorSpec;
use wanrt::io::{self, Checkpoint};
use wanrt::lora::{Lora, MergePlan, StoreAs};
use wanrt::tensor::Weight;
use wanrt::{DType, Error, Result, Tensor};

/// The `lora` subcommands.
#[derive(Subcommand)]
pub enum LoraCommand {
    /// Merge LoRAs into a DiT checkpoint and write the result as one safetensors file.
    Merge(MergeArgs),
}

/// Arguments of `wanrt lora merge`.
#[derive(Args)]
pub struct MergeArgs {
    /// The base DiT: a file or a sharded folder, in any layout and dtype.
    #[arg(long)]
    dit: PathBuf,
    /// A LoRA with its strength (default 1); repeat for several, they add up.
    #[arg(long = "lora", required = true, value_name = "FILE[:STRENGTH]")]
    loras: Vec<String>,
    /// The merged checkpoint to write (atomically).
    #[arg(long)]
    out: PathBuf,
    /// Storage of the result: same (each tensor keeps its dtype), bf16, f16, f32,
    /// fp8_e4m3fn, fp8_e5m2, fp8_e4m3fn_scaled or fp8_e5m2_scaled.
    #[arg(long, default_value = "same")]
    dtype: StoreAs,
    /// A Wan `config.json` the base must agree with (otherwise inferred from the shapes).
    #[arg(long)]
    config: Option<PathBuf>,
}

/// Runs a `lora` subcommand; false on failure (reported on stderr).
pub fn run(cmd: &LoraCommand) -> bool {
    let LoraCommand::Merge(args) = cmd;
    let Some(warnings) = crate::report::reported("", || merge(args)) else {
        return false;
    };
    for w in warnings {
        eprintln!("warning: {w}");
    }
    true
}

/// `FILE[:STRENGTH]`: the text after the last `:` is the strength when it parses as a number.
fn parse_spec(spec: &str) -> (PathBuf, f32) {
    match spec.rsplit_once(':') {
        Some((path, s)) if !path.is_empty() => match s.parse::<f32>() {
            Ok(v) => (PathBuf::from(path), v),
            Err(_) => (PathBuf::from(spec), 1.0),
        },
        _ => (PathBuf::from(spec), 1.0),
    }
}

/// Merges and writes; returns the warnings.
fn merge(args: &MergeArgs) -> Result<Vec<String>> {
    let ckpt = io::open(&args.dit)?;
    let names = layout::stored_names(&layout::metas(&ckpt))?;
    let (detected, weights) = layout::canonical_weights(&ckpt)?;
    if !matches!(detected.component, Component::Dit(_)) {
        return Err(Error::UnsupportedModel(format!(
            "{}: a {:?}, not a Wan DiT",
            args.dit.display(),
            detected.component
        )));
    }
    DitConfig::load(&layout::weight_metas(&weights), args.config.as_deref())?;
    let mut loras = Vec::with_capacity(args.loras.len());
    for spec in &args.loras {
        let (path, strength) = parse_spec(spec);
        loras.push((Lora::open(&path)?, strength));
    }
    let refs: Vec<(&Lora, f32)> = loras.iter().map(|(l, s)| (l, *s)).collect();
    let plan = MergePlan::new(&weights, &refs, args.dtype)?;

    let base_scaled = match detected.quant {
        Quant::ScaledFp8(d) => Some(d),
        _ => None,
    };
    let out = Outputs::new(&ckpt, base_scaled, &names, &weights, &plan)?;
    let mut metadata = ckpt.metadata.clone();
    let mut record: Vec<serde_json::Value> = metadata
        .get(MERGED_KEY)
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default();
    for (l, s) in &refs {
        record.push(serde_json::json!({
            "file": l.path.display().to_string(),
            // The strength as written (an f32 widened to JSON's f64 would show 0.800000011920929).
            "strength": s.to_string().parse::<f64>().ok(),
            "format": l.format.to_string(),
        }));
    }
    metadata.insert(
        MERGED_KEY.into(),
        serde_json::Value::from(record).to_string(),
    );
    metadata.insert("wanrt.merge_dtype".into(), args.dtype.to_string());
    // One merged weight at a time: only the weight being merged is in memory.
    io::safetensors::write_file_with(&args.out, &out.specs, &metadata, |put| {
        for (n, scale_name) in &out.weights {
            let old = &weights[&n.canonical];
            let merged = plan.merged(&n.canonical, old)?;
            let w = merged.as_ref().unwrap_or(old);
            put(&n.stored, &w.tensor)?;
            if let (Some(name), Some(s)) = (scale_name, w.scale) {
                put(name, &Tensor::from_f32(vec![s], [])?)?;
            }
        }
        for k in &out.base {
            put(k, &ckpt.tensors[*k])?;
        }
        if let Some((name, dtype)) = &out.marker {
            put(name, &Tensor::zeros([0], *dtype))?;
        }
        Ok(())
    })?;

    let report = plan.report;
    for r in &report.loras {
        println!(
            "merged {} (strength {}): {} low-rank modules, {} full deltas",
            r.path.display(),
            r.strength,
            r.low_rank,
            r.full_deltas
        );
    }
    println!("wrote {} ({})", args.out.display(), args.dtype);
    Ok(report.warnings())
}

/// The metadata key listing the merged LoRAs (a JSON list; a merge of a merged file extends it).
const MERGED_KEY: &str = "wanrt.merged_loras";

/// The tensors of the merged file, in the base file's layout: each weight under the base's
/// name (merged, or as the base stores it), with its ComfyUI `scale_weight` when it is scaled
/// fp8; the base's other tensors that still apply (markers, `scale_input`s of still-scaled
/// weights, anything unknown); and a new `scaled_fp8` marker when the weights became scaled
/// in another fp8 type than the base's (`base_scaled`).
struct Outputs<'a> {
    /// Every weight with the name of its scale tensor, if it has one after the merge.
    weights: Vec<(&'a StoredName, Option<String>)>,
    /// The base's other tensors kept as they are.
    base: Vec<&'a str>,
    /// A new `scaled_fp8` marker: its name and fp8 type.
    marker: Option<(String, DType)>,
    /// The name, dtype and shape of everything above, for the file's header.
    specs: Vec<TensorSpec>,
}

impl<'a> Outputs<'a> {
    fn new(
        ckpt: &'a Checkpoint,
        base_scaled: Option<DType>,
        names: &'a [StoredName],
        weights: &BTreeMap<String, Weight>,
        plan: &MergePlan<'_>,
    ) -> Result<Self> {
        let mut out = Outputs {
            weights: Vec::with_capacity(names.len()),
            base: Vec::new(),
            marker: None,
            specs: Vec::with_capacity(ckpt.tensors.len()),
        };
        let mut written = BTreeSet::new();
        let mut still_scaled = BTreeSet::new();
        let mut scaled = None;
        for n in names {
            let w = weights
                .get(&n.canonical)
                .ok_or_else(|| Error::MissingTensor {
                    name: n.canonical.clone(),
                    context: "merged weights".into(),
                })?;
            let (dtype, has_scale) = plan.stored_form(&n.canonical, w);
            out.spec(&n.stored, dtype, w.dims());
            written.extend([n.stored.clone()].into_iter().chain(n.scale.clone()));
            let scale_name = has_scale.then(|| {
                let base = n.stored.strip_suffix("weight").unwrap_or(&n.stored);
                n.scale
                    .clone()
                    .unwrap_or_else(|| format!("{base}scale_weight"))
            });
            if let Some(name) = &scale_name {
                out.spec(name, DType::F32, &[]);
                still_scaled.insert(n.stored.as_str());
                scaled = Some(dtype);
            }
            out.weights.push((n, scale_name));
        }
        let is_marker = |k: &str| k == "scaled_fp8" || k.ends_with(".scaled_fp8");
        for (k, t) in &ckpt.tensors {
            if written.contains(k) {
                continue;
            }
            // The base's marker stays if the weights stay scaled in its fp8 type.
            let keep = if is_marker(k) {
                scaled.is_some() && scaled == base_scaled
            } else if let Some(m) = k.strip_suffix(".scale_input") {
                still_scaled.contains(format!("{m}.weight").as_str())
            } else {
                true
            };
            if keep {
                out.spec(k, t.dtype(), t.dims());
                out.base.push(k);
            }
        }
        if let Some(dtype) = scaled {
            if scaled != base_scaled {
                // Under the base's ComfyUI prefix, if any (the stored name minus the canonical one).
                let prefix = names
                    .iter()
                    .find_map(|n| n.stored.strip_suffix(n.canonical.as_str()))
                    .unwrap_or("");
                let name = format!("{prefix}scaled_fp8");
                out.spec(&name, dtype, &[0]);
                out.marker = Some((name, dtype));
            }
        }
        Ok(out)
    }

    fn spec(&mut self, name: &str, dtype: DType, dims: &[usize]) {
        self.specs.push(TensorSpec {
            name: name.to_string(),
            dtype,
            dims: dims.to_vec(),
        });
    }
}
