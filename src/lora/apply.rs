//! Matching LoRAs to a model's weights, then merging them in or preparing them to run unmerged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::store::{widen, StoreAs};
use super::{check_strength, combine, Lora, LowRank};
use crate::backend::cpu::gemm::{sgemm, MatRef};
use crate::error::{Error, Result};
use crate::model::dit::{LinearDelta, WanDit};
use crate::tensor::{DType, Tensor, Weight};

/// How LoRAs are applied to a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Baked into the weights, stored back in their dtype: no cost per forward.
    Merged,
    /// Applied on the fly by every adapted linear layer: the big weights stay as stored (no
    /// requantization loss, no copy); full deltas go into f32 copies of their (small) tensors,
    /// and so do the layers a DoRA changes (its per-row renormalization of the whole weight is
    /// no low-rank delta).
    Unmerged,
}

/// What became of one LoRA.
#[derive(Debug, Clone)]
pub struct LoraReport {
    /// The LoRA file.
    pub path: PathBuf,
    /// Its strength.
    pub strength: f32,
    /// Low-rank pairs applied (DoRA ones included).
    pub low_rank: usize,
    /// Full deltas (`diff`, `diff_b`, `diff_m`) applied.
    pub full_deltas: usize,
    /// Keys of the file that match no module of the model, ignored: those naming no Wan
    /// module at all, then those for modules this model lacks (I2V layers, extra blocks).
    pub unmatched: Vec<String>,
}

/// What applying LoRAs did: one entry per LoRA, in order.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Per LoRA.
    pub loras: Vec<LoraReport>,
}

impl Report {
    /// One warning line per ignored key.
    pub fn warnings(&self) -> Vec<String> {
        self.loras
            .iter()
            .flat_map(|l| {
                l.unmatched.iter().map(|k| {
                    format!(
                        "{}: key `{k}` matches no module of the model (ignored)",
                        l.path.display()
                    )
                })
            })
            .collect()
    }
}

/// One change to one parameter.
enum Delta<'a> {
    /// `+= scale · up @ down`.
    LowRank(&'a LowRank, f32),
    /// DoRA, see [`renormalize`]: the pair, its magnitude, `alpha / rank` and the strength.
    Dora(&'a LowRank, &'a Tensor, f32, f32),
    /// `+= strength · delta`.
    Full(&'a Tensor, f32),
}

/// Per target parameter (canonical name), its changes in LoRA order, each with the index of its
/// LoRA.
type Targets<'a> = BTreeMap<String, Vec<(usize, Delta<'a>)>>;

/// Matches every LoRA against `weights`: a change to a parameter the model lacks is reported,
/// one whose shape disagrees with the parameter is an error naming its key, and so is a LoRA
/// that changes nothing.
fn plan<'a>(
    weights: &BTreeMap<String, Weight>,
    loras: &[(&'a Lora, f32)],
) -> Result<(Targets<'a>, Report)> {
    let mut targets: Targets = BTreeMap::new();
    let mut report = Report::default();
    for (index, &(lora, strength)) in loras.iter().enumerate() {
        check_strength(&lora.path, strength)?;
        let mut r = LoraReport {
            path: lora.path.clone(),
            strength,
            low_rank: 0,
            full_deltas: 0,
            unmatched: lora.unmatched.clone(),
        };
        for (m, module) in &lora.modules {
            let mut changes = Vec::new();
            if let Some(p) = &module.low_rank {
                let mut keys = vec![
                    format!("{m}.lora_up.weight"),
                    format!("{m}.lora_down.weight"),
                ];
                if p.alpha.is_some() {
                    keys.push(format!("{m}.alpha"));
                }
                let dims = vec![p.up.dims()[0], p.down.dims()[1]];
                let delta = match &p.magnitude {
                    Some(mag) => {
                        keys.push(format!("{m}.dora_scale"));
                        Delta::Dora(p, mag, p.scale(1.0), strength)
                    }
                    None => Delta::LowRank(p, p.scale(strength)),
                };
                changes.push((format!("{m}.weight"), dims, delta, keys));
            }
            let full = [
                (&module.diff, "weight", "diff"),
                (&module.diff_b, "bias", "diff_b"),
                (&module.diff_m, "modulation", "diff_m"),
            ];
            for (t, param, part) in full {
                if let Some(t) = t {
                    let delta = Delta::Full(t, strength);
                    let key = vec![format!("{m}.{part}")];
                    changes.push((format!("{m}.{param}"), t.dims().to_vec(), delta, key));
                }
            }
            for (target, dims, delta, keys) in changes {
                let Some(w) = weights.get(&target) else {
                    r.unmatched
                        .extend(keys.iter().map(|k| lora.stored_name(k).to_string()));
                    continue;
                };
                if w.dims() != dims {
                    return Err(Error::UnsupportedModel(format!(
                        "LoRA {}: `{}` changes `{target}` by a delta of shape {dims:?}, but the model's `{target}` has shape {:?} (a LoRA for another model size?)",
                        lora.path.display(),
                        lora.stored_name(&keys[0]),
                        w.dims()
                    )));
                }
                match delta {
                    Delta::LowRank(..) | Delta::Dora(..) => r.low_rank += 1,
                    Delta::Full(..) => r.full_deltas += 1,
                }
                targets.entry(target).or_default().push((index, delta));
            }
        }
        if r.low_rank + r.full_deltas == 0 {
            return Err(Error::UnsupportedModel(format!(
                "LoRA {}: no key matches a module of this model (first key `{}`)",
                lora.path.display(),
                r.unmatched.first().map_or("", String::as_str)
            )));
        }
        report.loras.push(r);
    }
    Ok((targets, report))
}

/// Adds `deltas` to the f32 values `v` of a parameter (shapes checked by [`plan`]).
fn add_deltas<'a>(v: &mut [f32], deltas: impl IntoIterator<Item = &'a Delta<'a>>) -> Result<()> {
    for d in deltas {
        match *d {
            Delta::Full(t, strength) => {
                for (x, y) in v.iter_mut().zip(t.f32_data()?) {
                    *x += strength * y;
                }
            }
            Delta::LowRank(p, scale) => add_low_rank(v, p, scale)?,
            Delta::Dora(p, magnitude, scale, strength) => {
                let before = v.to_vec();
                add_low_rank(v, p, scale)?;
                renormalize(v, &before, magnitude.f32_data()?, strength);
            }
        }
    }
    Ok(())
}

/// `v += scale · up @ down`.
fn add_low_rank(v: &mut [f32], p: &LowRank, scale: f32) -> Result<()> {
    let (out, rank, inp) = (p.up.dims()[0], p.rank(), p.down.dims()[1]);
    let up: Vec<f32> = p.up.f32_data()?.iter().map(|u| scale * u).collect();
    let a = MatRef::row_major(&up, out, rank);
    let b = MatRef::row_major(p.down.f32_data()?, rank, inp);
    sgemm(a, b, v, true, rayon::current_num_threads());
    Ok(())
}

/// DoRA's merge, given `v = W + ΔW` (`ΔW = alpha / rank · up @ down`) and `before = W`, both
/// `[out, in]`: `W_dora = m · (W + ΔW) / (‖W + ΔW‖ + ε)`, where the norm is taken per output
/// row, over the `in` axis, as the reference does (peft's `DoraLinearLayer.get_weight_norm`:
/// `torch.linalg.norm(W + ΔW, dim=1)` on the `[out, in]` weight, one norm per output feature,
/// matching `lora_magnitude_vector` `[out]` and kohya/LyCORIS's `dora_scale` `[out, 1]`);
/// ε = f32::EPSILON as in ComfyUI. The strength blends as ComfyUI does: `v = W + strength ·
/// (W_dora − W)`, so strength 1 is the DoRA weight and 0 the base weight. Each row is summed
/// serially in f64: the same bits for every thread count.
fn renormalize(v: &mut [f32], before: &[f32], magnitude: &[f32], strength: f32) {
    let n = v.len() / magnitude.len();
    let strength = strength as f64;
    v.par_chunks_mut(n)
        .zip(before.par_chunks(n))
        .zip(magnitude.par_iter())
        .for_each(|((row, w), &m)| {
            let norm = row.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
            let f = m as f64 / (norm + f32::EPSILON as f64);
            for (x, &w) in row.iter_mut().zip(w) {
                let w = w as f64;
                *x = (w + strength * (*x as f64 * f - w)) as f32;
            }
        });
}

/// Merges `loras` (each with its strength) into canonical DiT `weights`: every changed
/// parameter is computed in f32 (`W + Σ scale · up @ down + Σ strength · diff`, the changes in
/// LoRA order) and stored back as `store` says; with a `store` other than [`StoreAs::Same`] the
/// unchanged parameters are converted too. A DoRA pair with magnitude `m` turns the weight `W`
/// it finds into `W + strength · (W_dora − W)`, `W_dora = m · (W + ΔW) / ‖W + ΔW‖` with
/// `ΔW = alpha / rank · up @ down` and one norm per output row (peft's convention:
/// `torch.linalg.norm(W + ΔW, dim=1)` over the `[out, in]` weight). Errors as [`Report`]
/// describes; ignored keys are in the report.
pub fn merge(
    mut weights: BTreeMap<String, Weight>,
    loras: &[(&Lora, f32)],
    store: StoreAs,
) -> Result<(BTreeMap<String, Weight>, Report)> {
    let plan = MergePlan::new(&weights, loras, store)?;
    for (name, w) in weights.iter_mut() {
        if let Some(new) = plan.merged(name, w)? {
            *w = new;
        }
    }
    Ok((weights, plan.report))
}

/// A merge matched and checked but not yet computed, so that its parameters can be merged one
/// at a time (as `wanrt lora merge` streams them to disk); [`merge`] does them all at once.
pub struct MergePlan<'a> {
    targets: Targets<'a>,
    store: StoreAs,
    /// What the merge applies and ignores.
    pub report: Report,
}

impl<'a> MergePlan<'a> {
    /// Matches `loras` against `weights` (errors as in [`merge`]) without computing anything.
    pub fn new(
        weights: &BTreeMap<String, Weight>,
        loras: &[(&'a Lora, f32)],
        store: StoreAs,
    ) -> Result<Self> {
        store.validate()?;
        let (targets, report) = plan(weights, loras)?;
        Ok(MergePlan {
            targets,
            store,
            report,
        })
    }

    /// The dtype parameter `name` (stored as `old`) has after the merge, and whether it carries
    /// a ComfyUI fp8 scale: what [`MergePlan::merged`] will return, known before computing it.
    pub fn stored_form(&self, name: &str, old: &Weight) -> (DType, bool) {
        self.store.stored_form(name, old)
    }

    /// Parameter `name` (stored as `old`) with the LoRAs merged in and stored as planned, or
    /// `None` where it stays exactly as `old`.
    pub fn merged(&self, name: &str, old: &Weight) -> Result<Option<Weight>> {
        match self.targets.get(name) {
            Some(deltas) => {
                let mut v = widen(old)?;
                add_deltas(&mut v, deltas.iter().map(|(_, d)| d))?;
                self.store.store(name, v, old).map(Some)
            }
            None => self.store.convert(name, old),
        }
    }
}

/// One change of a merge done elsewhere than [`add_deltas`] (the CUDA merge), from
/// [`MergePlan::changes`].
#[cfg(any(test, feature = "cuda"))]
#[derive(Clone, Copy)]
pub(crate) enum Change<'a> {
    /// `+= scale · up @ down` with the pair's [`LowRank::scale`] at the LoRA's strength.
    Pair(&'a LowRank),
    /// `+= strength · delta`.
    Full(&'a Tensor),
}

/// A target parameter's name and its changes, each with the index of its LoRA.
#[cfg(any(test, feature = "cuda"))]
pub(crate) type TargetChanges<'p, 'a> = (&'p str, Vec<(usize, Change<'a>)>);

#[cfg(any(test, feature = "cuda"))]
impl<'a> MergePlan<'a> {
    /// Per target parameter, its changes in LoRA order, each with the index of its LoRA. Fails
    /// on a DoRA pair: its renormalization per output row is merged on the CPU only.
    pub(crate) fn changes(&self) -> Result<Vec<TargetChanges<'_, 'a>>> {
        self.targets
            .iter()
            .map(|(name, deltas)| {
                let changes = deltas
                    .iter()
                    .map(|&(lora, ref d)| match *d {
                        Delta::LowRank(p, _) => Ok((lora, Change::Pair(p))),
                        Delta::Full(t, _) => Ok((lora, Change::Full(t))),
                        Delta::Dora(..) => Err(Error::InvalidArgument(format!(
                            "`{name}` is changed by a DoRA pair, which only the CPU merge applies"
                        ))),
                    })
                    .collect::<Result<_>>()?;
                Ok((name.as_str(), changes))
            })
            .collect()
    }

    /// How the merged parameters are stored.
    #[cfg(test)]
    pub(crate) fn store_as(&self) -> StoreAs {
        self.store
    }
}

/// LoRAs prepared to run unmerged: what [`unmerged`] returns.
#[derive(Debug, Clone)]
pub struct Unmerged {
    /// The base weights, with the full deltas added (those parameters become f32).
    pub weights: BTreeMap<String, Weight>,
    /// Per linear layer (canonical module path), the low-rank delta of all the LoRAs, for
    /// [`WanDit::set_linear_deltas`].
    pub deltas: BTreeMap<String, LinearDelta>,
    /// What was applied and ignored.
    pub report: Report,
}

/// Prepares `loras` to run on the fly: their low-rank pairs become per-layer [`LinearDelta`]s
/// (ranks concatenated, scales folded in), their full deltas are added to f32 copies of the
/// (small) parameters they change. A weight that a DoRA changes gets all its changes merged
/// into an f32 copy instead, as [`merge`] computes them. Matching and errors as in [`merge`].
pub fn unmerged(mut weights: BTreeMap<String, Weight>, loras: &[(&Lora, f32)]) -> Result<Unmerged> {
    let (targets, report) = plan(&weights, loras)?;
    let mut deltas = BTreeMap::new();
    for (name, changes) in &targets {
        let dora = changes.iter().any(|(_, d)| matches!(d, Delta::Dora(..)));
        let copied: Vec<&Delta> = changes
            .iter()
            .map(|(_, d)| d)
            .filter(|d| dora || matches!(d, Delta::Full(..)))
            .collect();
        if !copied.is_empty() {
            let old = &weights[name];
            let mut v = widen(old)?;
            add_deltas(&mut v, copied)?;
            let new = Weight::new(Tensor::from_f32(v, old.tensor.shape().clone())?);
            weights.insert(name.clone(), new);
        }
        let pairs: Vec<(&LowRank, f32)> = changes
            .iter()
            .filter_map(|(_, d)| match *d {
                Delta::LowRank(p, s) if !dora => Some((p, s)),
                _ => None,
            })
            .collect();
        if !pairs.is_empty() {
            let module = name.strip_suffix(".weight").unwrap_or(name);
            deltas.insert(module.to_string(), combine(&pairs)?);
        }
    }
    Ok(Unmerged {
        weights,
        deltas,
        report,
    })
}

/// Opens a DiT checkpoint (as [`WanDit::open`]) with `loras` applied in `mode`.
pub fn open_dit(
    path: impl AsRef<Path>,
    config_json: Option<&Path>,
    loras: &[(&Lora, f32)],
    mode: Mode,
) -> Result<(WanDit, Report)> {
    let (weights, cfg) = WanDit::read_weights(path, config_json)?;
    match mode {
        Mode::Merged => {
            let (weights, report) = merge(weights, loras, StoreAs::Same)?;
            Ok((WanDit::new(weights, cfg)?, report))
        }
        Mode::Unmerged => {
            let u = unmerged(weights, loras)?;
            let mut dit = WanDit::new(u.weights, cfg)?;
            dit.set_linear_deltas(u.deltas)?;
            Ok((dit, u.report))
        }
    }
}
