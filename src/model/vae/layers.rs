//! The VAE's layers as streaming steps (wan-architecture.md §2.2, §2.5).
//!
//! Every layer maps a chunk of consecutive frames `[B, C, n, H, W]` to the next chunk of its
//! output, carrying what it needs from earlier chunks in a [`LayerState`]. The state follows the
//! whole-sequence form of the causal cache: a causal conv keeps the last `kt - 1` frames of its
//! (front-zero-padded) input, `upsample3d` passes the first frame of the sequence through, and
//! `downsample3d` keeps the frames its next stride-2 window still needs. So any split of a
//! sequence into chunks (one frame at a time, upstream's 1, 4, 4, … or all at once) gives the
//! same result.

use crate::backend::Device;
use crate::error::{Error, Result};
use crate::tensor::ops::{attention, cat, AttentionParams};
use crate::tensor::{Tensor, Weight};

/// A convolution's weight `[Cout, Cin, kt, kh, kw]` (2-D kernels stored with `kt = 1`) and bias.
#[derive(Debug, Clone)]
pub(super) struct Conv {
    pub w: Weight,
    pub b: Weight,
}

impl Conv {
    fn to_device(&self, d: Device) -> Result<Conv> {
        Ok(Conv {
            w: self.w.to_device(d)?,
            b: self.b.to_device(d)?,
        })
    }

    fn apply(&self, x: &Tensor, stride: [usize; 3], padding: [usize; 3]) -> Result<Tensor> {
        x.conv3d(&self.w, Some(&self.b), stride, padding)
    }

    /// Kernel extent (frames, rows, columns).
    fn kernel(&self) -> [usize; 3] {
        let d = self.w.dims();
        [d[2], d[3], d[4]]
    }
}

/// The dims of a video activation `[B, C, T, H, W]`.
pub(super) fn dims5(x: &Tensor) -> Result<[usize; 5]> {
    x.dims().try_into().map_err(|_| Error::ShapeMismatch {
        op: "Wan VAE",
        expected: "a video [B, C, T, H, W]".into(),
        got: x.shape().clone(),
    })
}

/// What a layer carries from one chunk to the next.
#[derive(Debug, Default)]
pub(super) struct LayerState {
    /// Causal-conv input frames (a residual block has two convs); for `downsample3d`, the frames
    /// not yet consumed by a stride-2 window.
    cache: [Option<Tensor>; 2],
    /// Whether the first frame of the sequence has gone through (`upsample3d`, `downsample3d`).
    started: bool,
}

/// `CausalConv3d`: zero padding of `(kh-1)/2`, `(kw-1)/2` on both spatial sides and `kt - 1`
/// frames in front only (the `2·pt` of §2.2, with `kt = 2·pt + 1`).
#[derive(Debug, Clone)]
pub(super) struct CausalConv3d(pub Conv);

impl CausalConv3d {
    fn to_device(&self, d: Device) -> Result<CausalConv3d> {
        Ok(CausalConv3d(self.0.to_device(d)?))
    }

    /// The conv of chunk `x` (taken by value so that it is freed once copied into the padded
    /// input); `cache` holds the last `kt - 1` input frames before it (`None`: the start of the
    /// sequence, i.e. zeros).
    fn step(&self, x: Tensor, cache: &mut Option<Tensor>) -> Result<Tensor> {
        let [kt, kh, kw] = self.0.kernel();
        let pad = [0, (kh - 1) / 2, (kw - 1) / 2];
        let keep = kt - 1;
        if keep == 0 {
            return self.0.apply(&x, [1; 3], pad);
        }
        let input = match cache.take() {
            Some(c) => cat(&[&c, &x], 2)?,
            None => x.pad_zeros(&[(0, 0), (0, 0), (keep, 0), (0, 0), (0, 0)])?,
        };
        drop(x);
        let t = input.dims()[2];
        *cache = Some(input.narrow(2, t - keep, keep)?);
        self.0.apply(&input, [1; 3], pad)
    }
}

/// `ResidualBlock`: `shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x))))))`.
#[derive(Debug, Clone)]
pub(super) struct ResBlock {
    pub norm1: Weight,
    pub conv1: CausalConv3d,
    pub norm2: Weight,
    pub conv2: CausalConv3d,
    /// A 1×1×1 conv when the block changes the width; identity otherwise.
    pub shortcut: Option<Conv>,
}

impl ResBlock {
    fn to_device(&self, d: Device) -> Result<ResBlock> {
        Ok(ResBlock {
            norm1: self.norm1.to_device(d)?,
            conv1: self.conv1.to_device(d)?,
            norm2: self.norm2.to_device(d)?,
            conv2: self.conv2.to_device(d)?,
            shortcut: self.shortcut.as_ref().map(|s| s.to_device(d)).transpose()?,
        })
    }

    fn step(&self, x: &Tensor, caches: &mut [Option<Tensor>; 2]) -> Result<Tensor> {
        // Each intermediate is dropped as soon as the next exists: at full resolution one
        // frame of 96 channels is 150 MB.
        let [c1, c2] = caches;
        let a = x.channel_rms_norm(&self.norm1)?.silu()?;
        let h = self.conv1.step(a, c1)?;
        let a = h.channel_rms_norm(&self.norm2)?.silu()?;
        drop(h);
        let h = self.conv2.step(a, c2)?;
        match &self.shortcut {
            Some(s) => h.add(&s.apply(x, [1; 3], [0; 3])?),
            None => h.add(x),
        }
    }
}

/// `AttentionBlock`: single-head self-attention over the positions of each frame.
#[derive(Debug, Clone)]
pub(super) struct AttnBlock {
    pub norm: Weight,
    /// `to_qkv` as a 1×1×1 conv `C → 3C` (q, k, v in that order along the channels).
    pub qkv: Conv,
    pub proj: Conv,
}

impl AttnBlock {
    fn to_device(&self, d: Device) -> Result<AttnBlock> {
        Ok(AttnBlock {
            norm: self.norm.to_device(d)?,
            qkv: self.qkv.to_device(d)?,
            proj: self.proj.to_device(d)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let [b, c, t, h, w] = dims5(x)?;
        let qkv = self
            .qkv
            .apply(&x.channel_rms_norm(&self.norm)?, [1; 3], [0; 3])?;
        // [B, 3C, T, HW] -> tokens [B·T, HW, 3C].
        let tokens = qkv
            .reshape([b, 3 * c, t, h * w])?
            .permute(&[0, 2, 3, 1])?
            .reshape([b * t, h * w, 3 * c])?;
        let part = |i: usize| tokens.narrow(2, i * c, c)?.reshape([b * t, h * w, 1, c]);
        let params = AttentionParams {
            scale: 1.0 / (c as f32).sqrt(),
            kv_lens: None,
            bias: None,
        };
        let o = attention(&part(0)?, &part(1)?, &part(2)?, &params)?;
        let o = o
            .reshape([b, t, h * w, c])?
            .permute(&[0, 3, 1, 2])?
            .reshape([b, c, t, h, w])?;
        self.proj.apply(&o, [1; 3], [0; 3])?.add(x)
    }
}

/// One entry of the encoder's or decoder's layer list.
#[derive(Debug, Clone)]
pub(super) enum Layer {
    /// A causal conv (`conv1`, `head.2`, the top-level 1×1×1 `conv1`/`conv2`).
    Conv(CausalConv3d),
    Res(ResBlock),
    Attn(AttnBlock),
    /// `RMS_norm` then SiLU (`head.0`, `head.1`).
    NormSilu(Weight),
    /// The spatial half of `upsample2d/3d`: nearest ×2, then a 3×3 conv `C → C/2` on each frame.
    SpatialUp(Conv),
    /// The temporal half of `upsample3d`: the first frame of the sequence passes through; every
    /// later frame goes through `time_conv` (`C → 2C`, causal) and becomes two frames.
    TimeUp(CausalConv3d),
    /// The spatial half of `downsample2d/3d`: zero pad right and bottom by 1, 3×3 conv stride 2.
    SpatialDown(Conv),
    /// The temporal half of `downsample3d`: `[s_0] ++ conv_t(k 3, stride 2, no padding)(s)`.
    TimeDown(Conv),
}

impl Layer {
    /// The layer with its weights on `d` (stored dtypes kept).
    pub(super) fn to_device(&self, d: Device) -> Result<Layer> {
        Ok(match self {
            Layer::Conv(c) => Layer::Conv(c.to_device(d)?),
            Layer::Res(r) => Layer::Res(r.to_device(d)?),
            Layer::Attn(a) => Layer::Attn(a.to_device(d)?),
            Layer::NormSilu(g) => Layer::NormSilu(g.to_device(d)?),
            Layer::SpatialUp(c) => Layer::SpatialUp(c.to_device(d)?),
            Layer::TimeUp(c) => Layer::TimeUp(c.to_device(d)?),
            Layer::SpatialDown(c) => Layer::SpatialDown(c.to_device(d)?),
            Layer::TimeDown(c) => Layer::TimeDown(c.to_device(d)?),
        })
    }

    /// The output for the next chunk `x`, or `None` when the chunk completes no output frame
    /// (only `TimeDown`, which waits for a full stride-2 window).
    pub(super) fn step(&self, x: Tensor, s: &mut LayerState) -> Result<Option<Tensor>> {
        let out = match self {
            Layer::Conv(c) => c.step(x, &mut s.cache[0])?,
            Layer::Res(r) => r.step(&x, &mut s.cache)?,
            Layer::Attn(a) => a.forward(&x)?,
            Layer::NormSilu(g) => x.channel_rms_norm(g)?.silu()?,
            Layer::SpatialUp(c) => c.apply(&x.upsample_nearest2x()?, [1; 3], [0, 1, 1])?,
            Layer::SpatialDown(c) => c.apply(
                &x.pad_zeros(&[(0, 0), (0, 0), (0, 0), (0, 1), (0, 1)])?,
                [1, 2, 2],
                [0; 3],
            )?,
            Layer::TimeUp(c) => return time_up(c, &x, s),
            Layer::TimeDown(c) => return time_down(c, &x, s),
        };
        Ok(Some(out))
    }
}

fn time_up(conv: &CausalConv3d, x: &Tensor, s: &mut LayerState) -> Result<Option<Tensor>> {
    let t = x.dims()[2];
    let (first, rest) = if s.started {
        (None, x.clone())
    } else {
        s.started = true;
        if t == 1 {
            return Ok(Some(x.clone()));
        }
        (Some(x.narrow(2, 0, 1)?), x.narrow(2, 1, t - 1)?)
    };
    let y = conv.step(rest, &mut s.cache[0])?;
    // [B, 2C, n, H, W]: channels [0, C) become frame 2i, [C, 2C) frame 2i + 1.
    let [b, c2, n, h, w] = dims5(&y)?;
    let y = y
        .reshape([b, 2, c2 / 2, n, h * w])?
        .permute(&[0, 2, 3, 1, 4])?
        .reshape([b, c2 / 2, 2 * n, h, w])?;
    Ok(Some(match first {
        Some(f) => cat(&[&f, &y], 2)?,
        None => y,
    }))
}

fn time_down(conv: &Conv, x: &Tensor, s: &mut LayerState) -> Result<Option<Tensor>> {
    let mut out = Vec::with_capacity(2);
    // `pending` starts at the first frame of the next window: s_0 for output frame 1.
    let pending = match s.cache[0].take() {
        Some(p) => cat(&[&p, x], 2)?,
        None => x.clone(),
    };
    if !s.started {
        s.started = true;
        out.push(x.narrow(2, 0, 1)?);
    }
    let n = pending.dims()[2];
    let windows = if n >= 3 { (n - 3) / 2 + 1 } else { 0 };
    if windows > 0 {
        out.push(conv.apply(&pending, [2, 1, 1], [0; 3])?);
    }
    let used = 2 * windows;
    s.cache[0] = Some(pending.narrow(2, used, n - used)?);
    Ok(match out.len() {
        0 => None,
        1 => out.pop(),
        _ => Some(cat(&[&out[0], &out[1]], 2)?),
    })
}
