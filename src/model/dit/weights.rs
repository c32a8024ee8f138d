//! Taking the DiT's parameters out of a canonical weight map, checking every shape against the
//! config so that a checkpoint/config mismatch is reported at load time, not mid-forward.

use std::collections::BTreeMap;

use super::DitConfig;
use crate::backend::Device;
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor, Weight};

/// A low-rank delta on one linear layer, applied on the fly: `y += (x · downᵀ) · upᵀ`. This is
/// how an unmerged LoRA runs; its strength and `alpha / rank` are folded into `up`, and several
/// LoRAs on one layer are one delta with their ranks concatenated.
#[derive(Debug, Clone)]
pub struct LinearDelta {
    down: Weight,
    up: Weight,
}

impl LinearDelta {
    /// A delta from f32 `down [rank, in]` and `up [out, rank]`.
    pub fn new(down: Tensor, up: Tensor) -> Result<LinearDelta> {
        for t in [&down, &up] {
            if t.dtype() != DType::F32 {
                return Err(Error::UnsupportedDType {
                    op: "LinearDelta",
                    dtype: t.dtype(),
                });
            }
        }
        match (down.dims(), up.dims()) {
            (&[r, _], &[_, r2]) if r == r2 => Ok(LinearDelta {
                down: Weight::new(down),
                up: Weight::new(up),
            }),
            _ => Err(Error::ShapeMismatch {
                op: "LinearDelta",
                expected: format!("up [out, rank] for down {}", down.shape()),
                got: up.shape().clone(),
            }),
        }
    }

    /// The rank (total over the LoRAs it combines).
    pub fn rank(&self) -> usize {
        self.down.dims()[0]
    }

    /// `[out, in]` of the weight it applies to.
    pub fn weight_dims(&self) -> [usize; 2] {
        [self.up.dims()[0], self.down.dims()[1]]
    }

    /// The delta on `device`.
    pub fn to_device(&self, device: Device) -> Result<LinearDelta> {
        self.map_tensors(&mut |t| t.to_device(device))
    }

    /// The delta with `down` and `up` mapped by `f`, in that order.
    fn map_tensors(&self, f: &mut TensorMap<'_>) -> Result<LinearDelta> {
        Ok(LinearDelta {
            down: map_weight(&self.down, f)?,
            up: map_weight(&self.up, f)?,
        })
    }
}

/// A function applied to each tensor of a layer in turn (moving it, copying its bytes out,
/// replacing it by a device copy).
pub(super) type TensorMap<'a> = dyn FnMut(&Tensor) -> Result<Tensor> + 'a;

/// `w` with its tensor mapped by `f`, its scale kept.
pub(super) fn map_weight(w: &Weight, f: &mut TensorMap<'_>) -> Result<Weight> {
    Ok(Weight {
        tensor: f(&w.tensor)?,
        scale: w.scale,
    })
}

/// Every canonical tensor (original Wan names) that [`super::WanDit::new`] takes for `cfg`, with
/// its shape: for building random or synthetic models (benchmarks, tests).
pub fn weight_shapes(cfg: &DitConfig) -> Vec<(String, Vec<usize>)> {
    let (d, f, [pt, ph, pw]) = (cfg.dim, cfg.ffn_dim, cfg.patch_size);
    let mut shapes: Vec<(String, Vec<usize>)> = Vec::new();
    let mut linear = |name: String, out: usize, inp: usize| {
        shapes.push((format!("{name}.weight"), vec![out, inp]));
        shapes.push((format!("{name}.bias"), vec![out]));
    };
    linear("text_embedding.0".into(), d, cfg.text_dim);
    linear("text_embedding.2".into(), d, d);
    linear("time_embedding.0".into(), d, cfg.freq_dim);
    linear("time_embedding.2".into(), d, d);
    linear("time_projection.1".into(), 6 * d, d);
    linear("head.head".into(), pt * ph * pw * cfg.out_dim, d);
    for i in 0..cfg.num_layers {
        for a in ["self_attn", "cross_attn"] {
            for m in ["q", "k", "v", "o"] {
                linear(format!("blocks.{i}.{a}.{m}"), d, d);
            }
        }
        linear(format!("blocks.{i}.ffn.0"), f, d);
        linear(format!("blocks.{i}.ffn.2"), d, f);
    }
    shapes.push((
        "patch_embedding.weight".into(),
        vec![d, cfg.in_dim, pt, ph, pw],
    ));
    shapes.push(("patch_embedding.bias".into(), vec![d]));
    shapes.push(("head.modulation".into(), vec![1, 2, d]));
    for i in 0..cfg.num_layers {
        shapes.push((format!("blocks.{i}.modulation"), vec![1, 6, d]));
        for n in [
            "self_attn.norm_q",
            "self_attn.norm_k",
            "cross_attn.norm_q",
            "cross_attn.norm_k",
            "norm3",
        ] {
            shapes.push((format!("blocks.{i}.{n}.weight"), vec![d]));
        }
        shapes.push((format!("blocks.{i}.norm3.bias"), vec![d]));
    }
    shapes
}

/// A linear layer as stored: weight `[out, in]` and bias `[out]` (every DiT linear has a bias),
/// plus an optional unmerged low-rank delta.
#[derive(Debug, Clone)]
pub(super) struct Linear {
    pub w: Weight,
    pub b: Weight,
    pub delta: Option<LinearDelta>,
}

impl Linear {
    /// `x [.., in] -> [.., out]` in the backend's compute dtype ([`Tensor::linear`]).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.apply(x, Tensor::linear)
    }

    /// [`Linear::forward`] kept in f32 ([`Tensor::linear_f32`]): the time embedding and
    /// projection and the head, which the reference computes in f32 (wan-architecture.md §1.9).
    pub fn forward_f32(&self, x: &Tensor) -> Result<Tensor> {
        self.apply(x, Tensor::linear_f32)
    }

    /// The layer on `device`, weights as stored.
    pub fn to_device(&self, device: Device) -> Result<Linear> {
        self.map_tensors(&mut |t| t.to_device(device))
    }

    /// The layer with its tensors mapped by `f` (weight, bias, then a delta's `down` and `up`),
    /// each weight keeping its scale.
    pub fn map_tensors(&self, f: &mut TensorMap<'_>) -> Result<Linear> {
        Ok(Linear {
            w: map_weight(&self.w, f)?,
            b: map_weight(&self.b, f)?,
            delta: self.delta.as_ref().map(|d| d.map_tensors(f)).transpose()?,
        })
    }

    /// The layer's weight and bias named `{prefix}.weight` and `{prefix}.bias`, appended to
    /// `out` for [`update_checked`].
    pub fn params<'a>(&'a mut self, prefix: &str, out: &mut Vec<(String, &'a mut Weight)>) {
        out.push((format!("{prefix}.weight"), &mut self.w));
        out.push((format!("{prefix}.bias"), &mut self.b));
    }

    fn apply(
        &self,
        x: &Tensor,
        linear: fn(&Tensor, &Weight, Option<&Weight>) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let y = linear(x, &self.w, Some(&self.b))?;
        match &self.delta {
            None => Ok(y),
            Some(d) => y.add(&linear(&linear(x, &d.down, None)?, &d.up, None)?),
        }
    }
}

/// A change to some of a DiT's parameters, given them by canonical name (`blocks.3.ffn.0.weight`,
/// `head.modulation`) where they live ([`super::WanDit::update_params`]): it may overwrite their
/// device bytes in place, change their fp8 scales, or replace a weight by another of the same
/// dtype, shape and device.
pub type ParamUpdate<'a> = dyn FnMut(&mut [(String, &mut Weight)]) -> Result<()> + 'a;

/// Runs `update` on `params`, then checks that it kept every parameter's dtype, shape and
/// device (an update that changed one fails, naming it, the parameters left as it left them).
pub(super) fn update_checked(
    params: &mut [(String, &mut Weight)],
    update: &mut ParamUpdate<'_>,
) -> Result<()> {
    let form = |w: &Weight| (w.dtype(), w.tensor.shape().clone(), w.tensor.device());
    let before: Vec<_> = params.iter().map(|(_, w)| form(w)).collect();
    update(params)?;
    for ((name, w), was) in params.iter().zip(before) {
        let now = form(w);
        if now != was {
            return Err(Error::InvalidArgument(format!(
                "`{name}` was {:?} {} on {} and became {:?} {} on {}: an update keeps each \
                 parameter's dtype, shape and device",
                was.0, was.1, was.2, now.0, now.1, now.2
            )));
        }
    }
    Ok(())
}

/// Runs `run` with an f32 table (a modulation, which the model keeps widened) taken out of
/// `slot` as a weight without a scale, and puts it back after.
pub(super) fn with_table<R>(slot: &mut Tensor, run: impl FnOnce(&mut Weight) -> R) -> R {
    let mut table = Weight::new(std::mem::replace(slot, Tensor::zeros([0], DType::F32)));
    let out = run(&mut table);
    *slot = table.tensor;
    out
}

/// Removes named tensors from the map, checking their shapes.
pub(super) struct Take {
    map: BTreeMap<String, Weight>,
}

impl Take {
    pub fn new(map: BTreeMap<String, Weight>) -> Take {
        Take { map }
    }

    /// The tensor `name`, which must have shape `dims`.
    pub fn weight(&mut self, name: &str, dims: &[usize]) -> Result<Weight> {
        let w = self.map.remove(name).ok_or_else(|| Error::MissingTensor {
            name: name.to_string(),
            context: "Wan DiT".into(),
        })?;
        if w.dims() != dims {
            return Err(Error::InvalidConfig(format!(
                "checkpoint tensor `{name}` has shape {:?} but the config needs {dims:?}",
                w.dims()
            )));
        }
        Ok(w)
    }

    /// `{prefix}.weight [out, in]` and `{prefix}.bias [out]`.
    pub fn linear(&mut self, prefix: &str, out: usize, inp: usize) -> Result<Linear> {
        Ok(Linear {
            w: self.weight(&format!("{prefix}.weight"), &[out, inp])?,
            b: self.weight(&format!("{prefix}.bias"), &[out])?,
            delta: None,
        })
    }

    /// A small parameter needed as an f32 activation (modulation tables), widened once.
    pub fn f32_tensor(&mut self, name: &str, dims: &[usize]) -> Result<Tensor> {
        self.weight(name, dims)?.to_f32()
    }

    /// Rejects what is left over that shows the checkpoint is not the configured model: blocks
    /// beyond `num_layers`, or image-conditioning (I2V) tensors. Anything else (format markers
    /// such as `scaled_fp8`) is ignored.
    pub fn finish(self, cfg: &DitConfig) -> Result<()> {
        for name in self.map.keys() {
            if let Some(idx) = name
                .strip_prefix("blocks.")
                .and_then(|r| r.split('.').next())
            {
                if idx.parse::<usize>().is_ok_and(|i| i >= cfg.num_layers) {
                    return Err(Error::InvalidConfig(format!(
                        "checkpoint has `{name}` but the config has {} layers",
                        cfg.num_layers
                    )));
                }
            }
            if name.starts_with("img_emb.") || name.contains(".cross_attn.k_img") {
                return Err(Error::UnsupportedModel(format!(
                    "checkpoint has image-conditioning tensor `{name}` (I2V): only the T2V DiT is supported"
                )));
            }
        }
        Ok(())
    }
}
