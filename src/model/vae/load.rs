//! Building the encoder and decoder layer lists from canonical (original Wan) VAE weights
//! (wan-architecture.md §2.3, §2.4, §2.7), checking every shape against the config so that a
//! checkpoint/config mismatch is reported at load time.

use std::collections::BTreeMap;

use super::layers::{AttnBlock, CausalConv3d, Conv, Layer, ResBlock};
use crate::error::{Error, Result};
use crate::io::config::VaeConfig;
use crate::tensor::Weight;

/// Removes named tensors from the canonical map, checking their shapes.
pub(super) struct Take {
    map: BTreeMap<String, Weight>,
}

impl Take {
    pub fn new(map: BTreeMap<String, Weight>) -> Take {
        Take { map }
    }

    fn weight(&mut self, name: &str, dims: &[usize]) -> Result<Weight> {
        let w = self.map.remove(name).ok_or_else(|| Error::MissingTensor {
            name: name.to_string(),
            context: "Wan VAE".into(),
        })?;
        if w.dims() != dims {
            return Err(Error::InvalidConfig(format!(
                "VAE tensor `{name}` has shape {:?} but the config needs {dims:?}",
                w.dims()
            )));
        }
        Ok(w)
    }

    /// An `RMS_norm` gamma of `c` values (stored `[C, 1, 1, 1]` or `[C, 1, 1]`).
    fn gamma(&mut self, name: &str, c: usize) -> Result<Weight> {
        let w = self.map.remove(name).ok_or_else(|| Error::MissingTensor {
            name: name.to_string(),
            context: "Wan VAE".into(),
        })?;
        if w.dims().first() != Some(&c) || w.tensor.elem_count() != c {
            return Err(Error::InvalidConfig(format!(
                "VAE tensor `{name}` has shape {:?} but the config needs {c} values",
                w.dims()
            )));
        }
        Ok(w)
    }

    /// `{prefix}.weight [cout, cin, kt, kh, kw]` and `{prefix}.bias [cout]`.
    fn conv3d(&mut self, prefix: &str, cout: usize, cin: usize, k: [usize; 3]) -> Result<Conv> {
        Ok(Conv {
            w: self.weight(&format!("{prefix}.weight"), &[cout, cin, k[0], k[1], k[2]])?,
            b: self.weight(&format!("{prefix}.bias"), &[cout])?,
        })
    }

    /// A 2-D conv `[cout, cin, k, k]`, viewed as a one-frame 3-D kernel (applied per frame).
    fn conv2d(&mut self, prefix: &str, cout: usize, cin: usize, k: usize) -> Result<Conv> {
        let w = self.weight(&format!("{prefix}.weight"), &[cout, cin, k, k])?;
        Ok(Conv {
            w: Weight {
                tensor: w.tensor.reshape([cout, cin, 1, k, k])?,
                scale: w.scale,
            },
            b: self.weight(&format!("{prefix}.bias"), &[cout])?,
        })
    }

    fn causal(
        &mut self,
        prefix: &str,
        cout: usize,
        cin: usize,
        k: [usize; 3],
    ) -> Result<CausalConv3d> {
        Ok(CausalConv3d(self.conv3d(prefix, cout, cin, k)?))
    }

    fn res(&mut self, prefix: &str, cin: usize, cout: usize) -> Result<Layer> {
        Ok(Layer::Res(ResBlock {
            norm1: self.gamma(&format!("{prefix}.residual.0.gamma"), cin)?,
            conv1: self.causal(&format!("{prefix}.residual.2"), cout, cin, [3; 3])?,
            norm2: self.gamma(&format!("{prefix}.residual.3.gamma"), cout)?,
            conv2: self.causal(&format!("{prefix}.residual.6"), cout, cout, [3; 3])?,
            shortcut: (cin != cout)
                .then(|| self.conv3d(&format!("{prefix}.shortcut"), cout, cin, [1; 3]))
                .transpose()?,
        }))
    }

    fn attn(&mut self, prefix: &str, c: usize) -> Result<Layer> {
        Ok(Layer::Attn(AttnBlock {
            norm: self.gamma(&format!("{prefix}.norm.gamma"), c)?,
            qkv: self.conv2d(&format!("{prefix}.to_qkv"), 3 * c, c, 1)?,
            proj: self.conv2d(&format!("{prefix}.proj"), c, c, 1)?,
        }))
    }

    /// `middle.0..2` (residual, attention, residual) and `head.0..2` of `{side}`.
    fn middle_and_head(
        &mut self,
        side: &str,
        c: usize,
        out: usize,
        layers: &mut Vec<Layer>,
    ) -> Result<()> {
        layers.push(self.res(&format!("{side}.middle.0"), c, c)?);
        layers.push(self.attn(&format!("{side}.middle.1"), c)?);
        layers.push(self.res(&format!("{side}.middle.2"), c, c)?);
        layers.push(Layer::NormSilu(
            self.gamma(&format!("{side}.head.0.gamma"), c)?,
        ));
        layers.push(Layer::Conv(self.causal(
            &format!("{side}.head.2"),
            out,
            c,
            [3; 3],
        )?));
        Ok(())
    }

    /// The encoder: `encoder.*` then the top-level `conv1` (`3 → 2·z_dim` channels).
    pub fn encoder(&mut self, cfg: &VaeConfig) -> Result<Vec<Layer>> {
        let widths: Vec<usize> = std::iter::once(1)
            .chain(cfg.dim_mult.iter().copied())
            .map(|m| m * cfg.dim)
            .collect();
        let stages = cfg.dim_mult.len();
        let mut layers = vec![Layer::Conv(self.causal(
            "encoder.conv1",
            widths[0],
            3,
            [3; 3],
        )?)];
        let mut k = 0;
        for i in 0..stages {
            let (mut cin, cout) = (widths[i], widths[i + 1]);
            for _ in 0..cfg.num_res_blocks {
                layers.push(self.res(&format!("encoder.downsamples.{k}"), cin, cout)?);
                cin = cout;
                k += 1;
            }
            if i + 1 < stages {
                let p = format!("encoder.downsamples.{k}");
                layers.push(Layer::SpatialDown(self.conv2d(
                    &format!("{p}.resample.1"),
                    cout,
                    cout,
                    3,
                )?));
                if temporal(&cfg.temperal_downsample, i)? {
                    layers.push(Layer::TimeDown(self.conv3d(
                        &format!("{p}.time_conv"),
                        cout,
                        cout,
                        [3, 1, 1],
                    )?));
                }
                k += 1;
            }
        }
        let top = widths[stages];
        let z2 = 2 * cfg.z_dim;
        self.middle_and_head("encoder", top, z2, &mut layers)?;
        layers.push(Layer::Conv(self.causal("conv1", z2, z2, [1; 3])?));
        Ok(layers)
    }

    /// The top-level `conv2` (`z_dim → z_dim`) then `decoder.*` (to 3 channels).
    pub fn decoder(&mut self, cfg: &VaeConfig) -> Result<Vec<Layer>> {
        let stages = cfg.dim_mult.len();
        let widths: Vec<usize> = std::iter::once(cfg.dim_mult[stages - 1])
            .chain(cfg.dim_mult.iter().rev().copied())
            .map(|m| m * cfg.dim)
            .collect();
        let z = cfg.z_dim;
        let mut layers = vec![
            Layer::Conv(self.causal("conv2", z, z, [1; 3])?),
            Layer::Conv(self.causal("decoder.conv1", widths[0], z, [3; 3])?),
        ];
        layers.push(self.res("decoder.middle.0", widths[0], widths[0])?);
        layers.push(self.attn("decoder.middle.1", widths[0])?);
        layers.push(self.res("decoder.middle.2", widths[0], widths[0])?);
        let mut k = 0;
        // Every stage but the first starts from the halved width of the previous upsample.
        let mut cin = widths[0];
        for i in 0..stages {
            let cout = widths[i + 1];
            for _ in 0..cfg.num_res_blocks + 1 {
                layers.push(self.res(&format!("decoder.upsamples.{k}"), cin, cout)?);
                cin = cout;
                k += 1;
            }
            if i + 1 < stages {
                let p = format!("decoder.upsamples.{k}");
                // temperal_upsample is temperal_downsample reversed.
                if temporal(&cfg.temperal_downsample, stages - 2 - i)? {
                    layers.push(Layer::TimeUp(self.causal(
                        &format!("{p}.time_conv"),
                        2 * cout,
                        cout,
                        [3, 1, 1],
                    )?));
                }
                layers.push(Layer::SpatialUp(self.conv2d(
                    &format!("{p}.resample.1"),
                    cout / 2,
                    cout,
                    3,
                )?));
                cin = cout / 2;
                k += 1;
            }
        }
        layers.push(Layer::NormSilu(self.gamma("decoder.head.0.gamma", cin)?));
        layers.push(Layer::Conv(self.causal(
            "decoder.head.2",
            3,
            cin,
            [3; 3],
        )?));
        Ok(layers)
    }

    /// Rejects leftover encoder/decoder tensors: they show a structure the config does not
    /// describe (more blocks, attention outside the middle).
    pub fn finish(self) -> Result<()> {
        match self
            .map
            .keys()
            .find(|k| k.starts_with("encoder.") || k.starts_with("decoder."))
        {
            Some(k) => Err(Error::InvalidConfig(format!(
                "VAE checkpoint has `{k}`, which the config does not describe"
            ))),
            None => Ok(()),
        }
    }
}

/// Whether resample stage `i` also scales time.
fn temporal(flags: &[bool], i: usize) -> Result<bool> {
    flags.get(i).copied().ok_or_else(|| {
        Error::InvalidConfig(format!(
            "temperal_downsample {flags:?} has no entry for resample stage {i}"
        ))
    })
}
