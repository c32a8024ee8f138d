//! The Wan2.1 VAE (wan-architecture.md §2): the causal video decoder and encoder, written
//! against the tensor ops.
//!
//! Time is causal: the first latent frame decodes to one video frame and every later one to
//! four; encoding takes the first frame alone, then four at a time (so videos have `1 + 4k`
//! frames). Space scales by 8.
//!
//! **Bounded memory.** Decoding streams: latent frames go in one at a time, and after each
//! temporal upsampling the frames continue one by one, every causal conv carrying the last two
//! frames of its input (the whole-sequence form of upstream's cache, §2.5). Video frames reach
//! [`WanVae::decode_frames`]'s sink as soon as they are complete, so the memory held is the
//! caches plus one frame's activations, whatever the frame count. [`DecodeOptions::tiling`]
//! also cuts the frame into overlapping, linearly blended tiles ([`Tiling`]) for machines with
//! little memory. Encoding streams frame by frame the same way.
//!
//! Weights stay in their stored dtype (f32, bf16, …) and are widened per conv call; activations
//! are in the backend's activation dtype ([`activation_dtype`]: f32 on the CPU, bf16 on CUDA).
//! Everything between the input tensor and the output tensor is a tensor op, so the VAE runs on
//! the device its input lives on (its weights must be there too).

mod layers;
mod load;
mod shapes;
mod stream;
mod tiling;

use std::collections::BTreeMap;
use std::path::Path;

pub use crate::io::config::VaeConfig;
pub use shapes::weight_shapes;
pub use tiling::Tiling;

use layers::{dims5, Layer};
use stream::Stream;
use tiling::{ramp, Blend};

use crate::backend::Device;
use crate::error::{Error, Result};
use crate::io::layout::{self, Component};
use crate::tensor::ops::{activation_dtype, cat};
use crate::tensor::{DType, Tensor, Weight};

/// Options of [`WanVae::decode`] and [`WanVae::decode_frames`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecodeOptions {
    /// Decode in overlapping spatial tiles (lower memory, about 2× the compute at the default
    /// size; not bit-identical to the untiled decode). `None`: whole frames.
    pub tiling: Option<Tiling>,
}

/// The Wan2.1 VAE.
#[derive(Debug)]
pub struct WanVae {
    cfg: VaeConfig,
    encoder: Vec<Layer>,
    decoder: Vec<Layer>,
}

impl WanVae {
    /// Builds the VAE from canonical weights (original Wan names, wan-architecture.md §2.7) and
    /// its config. Every tensor's shape is checked against the config (a mismatch or a leftover
    /// encoder/decoder tensor is [`Error::InvalidConfig`], a missing one
    /// [`Error::MissingTensor`]).
    pub fn new(weights: BTreeMap<String, Weight>, cfg: VaeConfig) -> Result<WanVae> {
        check_config(&cfg)?;
        let mut take = load::Take::new(weights);
        let encoder = take.encoder(&cfg)?;
        let decoder = take.decoder(&cfg)?;
        take.finish()?;
        Ok(WanVae {
            cfg,
            encoder,
            decoder,
        })
    }

    /// Opens a VAE checkpoint (`Wan2.1_VAE.pth`, ComfyUI `wan_2.1_vae.safetensors`, or the
    /// diffusers `AutoencoderKLWan` layout), renames it to the canonical names and builds the
    /// model, with the config inferred from the shapes and overridden by `config_json` (its
    /// latent mean/std win) if given.
    pub fn open(path: impl AsRef<Path>, config_json: Option<&Path>) -> Result<WanVae> {
        let path = path.as_ref();
        let (found, weights) = layout::canonical_weights(&crate::io::open(path)?)?;
        if found.component != Component::Vae {
            return Err(Error::UnsupportedModel(format!(
                "{}: a {:?}, not a Wan VAE",
                path.display(),
                found.component
            )));
        }
        let cfg = VaeConfig::load(&layout::weight_metas(&weights), config_json)?;
        WanVae::new(weights, cfg)
    }

    /// The VAE with its weights on `device` in their stored dtypes: it then decodes and encodes
    /// tensors on that device (inputs elsewhere are an [`Error::DeviceMismatch`]).
    pub fn to_device(&self, device: Device) -> Result<WanVae> {
        let moved = |layers: &[Layer]| -> Result<Vec<Layer>> {
            layers.iter().map(|l| l.to_device(device)).collect()
        };
        Ok(WanVae {
            cfg: self.cfg.clone(),
            encoder: moved(&self.encoder)?,
            decoder: moved(&self.decoder)?,
        })
    }

    /// The config.
    pub fn config(&self) -> &VaeConfig {
        &self.cfg
    }

    /// Video frames per latent frame after the first (4).
    pub fn time_stride(&self) -> usize {
        1 << self.cfg.temperal_downsample.iter().filter(|&&t| t).count()
    }

    /// Video pixels per latent pixel along each spatial axis (8).
    pub fn space_stride(&self) -> usize {
        1 << (self.cfg.dim_mult.len() - 1)
    }

    /// The number of video frames `t` latent frames decode to: `1 + 4·(t − 1)` (0 for 0).
    pub fn video_frames(&self, latent_frames: usize) -> usize {
        latent_frames.saturating_sub(1) * self.time_stride() + latent_frames.min(1)
    }

    /// Decodes a normalized latent `[B, z_dim, T, h, w]` (as the DiT produces it) to video
    /// `[B, 3, 1 + 4·(T−1), 8h, 8w]` in `[-1, 1]`. Holds the whole video (the frames, then
    /// their concatenation); use [`WanVae::decode_frames`] to consume frames as they are
    /// produced.
    pub fn decode(&self, z: &Tensor, opts: &DecodeOptions) -> Result<Tensor> {
        let mut frames = Vec::new();
        self.decode_frames(z, opts, &mut |chunk| {
            frames.push(chunk);
            Ok(())
        })?;
        cat(&frames.iter().collect::<Vec<_>>(), 2)
    }

    /// Decodes like [`WanVae::decode`] but hands the video to `sink` one frame at a time, in
    /// order, as `[B, 3, 1, 8h, 8w]` clamped to `[-1, 1]`, each frame as soon as it is complete
    /// (with tiling: after the last tile, from the blended video). An error from `sink` (e.g.
    /// [`Error::Cancelled`]) stops the decode and is returned.
    pub fn decode_frames(
        &self,
        z: &Tensor,
        opts: &DecodeOptions,
        sink: &mut dyn FnMut(Tensor) -> Result<()>,
    ) -> Result<()> {
        let [b, _, t, h, w] = self.check_latent(z)?;
        let x = self.denormalize(z)?;
        let mut clamped = |chunk: Tensor| sink(chunk.clamp(-1.0, 1.0)?);
        let Some(tiling) = opts.tiling else {
            return self.stream_decode(&x, &mut clamped);
        };
        tiling.validate()?;
        let (rows, cols) = (tiling.spans(h), tiling.spans(w));
        if rows.len() == 1 && cols.len() == 1 {
            return self.stream_decode(&x, &mut clamped);
        }
        let s = self.space_stride();
        let mut blend = Blend::new([b, 3, self.video_frames(t), h * s, w * s]);
        let edge = tiling.overlap * s;
        for &(y0, th) in &rows {
            for &(x0, tw) in &cols {
                let wy = ramp(th * s, edge, y0 > 0, y0 + th < h);
                let wx = ramp(tw * s, edge, x0 > 0, x0 + tw < w);
                let weights = blend.add_weights((y0 * s, x0 * s), &wy, &wx, x.device())?;
                let tile = x.narrow(3, y0, th)?.narrow(4, x0, tw)?;
                let mut next = 0;
                self.stream_decode(&tile, &mut |chunk| {
                    blend.add(&chunk, next, (y0 * s, x0 * s), &weights)?;
                    next += chunk.dims()[2];
                    Ok(())
                })?;
            }
        }
        for frame in blend.into_frames() {
            clamped(frame?)?;
        }
        Ok(())
    }

    /// The whole-sequence form (§2.5): every layer runs over all frames at once. The same
    /// result as [`WanVae::decode`] (up to float rounding), with memory growing with the frame
    /// count; a reference for tests.
    pub fn decode_whole_sequence(&self, z: &Tensor) -> Result<Tensor> {
        self.check_latent(z)?;
        let x = self.denormalize(z)?;
        let mut out = None;
        Stream::new(&self.decoder, usize::MAX).push(x, &mut |y| {
            out = Some(y);
            Ok(())
        })?;
        out.ok_or_else(|| Error::InvalidArgument("VAE: no frames decoded".into()))?
            .clamp(-1.0, 1.0)
    }

    /// Encodes video `[B, 3, F, H, W]` in `[-1, 1]` (`F = 1 + 4k`, `H` and `W` multiples of 8)
    /// to the normalized posterior mean `[B, z_dim, 1 + k, H/8, W/8]`: `(mu − mean) / std`.
    pub fn encode(&self, video: &Tensor) -> Result<Tensor> {
        let [_, _, f, _, _] = self.check_video(video)?;
        let video = video.to_dtype(activation_dtype(video.device()))?;
        let mut stream = Stream::new(&self.encoder, 1);
        let mut chunks = Vec::new();
        for i in 0..f {
            stream.push(video.narrow(2, i, 1)?, &mut |y| {
                chunks.push(y);
                Ok(())
            })?;
        }
        let moments = cat(&chunks.iter().collect::<Vec<_>>(), 2)?;
        let mu = moments.narrow(1, 0, self.cfg.z_dim)?;
        let [mean, std] = self.latent_statistics(&mu)?;
        mu.sub(&mean)?.div(&std)
    }

    /// Runs the decoder one latent frame at a time, one video frame at a time past each
    /// temporal upsampling.
    fn stream_decode(&self, x: &Tensor, sink: &mut dyn FnMut(Tensor) -> Result<()>) -> Result<()> {
        let mut stream = Stream::new(&self.decoder, 1);
        for i in 0..x.dims()[2] {
            stream.push(x.narrow(2, i, 1)?, sink)?;
        }
        Ok(())
    }

    /// `z·std + mean` per channel, in the activation dtype of `z`'s device.
    fn denormalize(&self, z: &Tensor) -> Result<Tensor> {
        let z = z.to_dtype(activation_dtype(z.device()))?;
        let [mean, std] = self.latent_statistics(&z)?;
        z.mul(&std)?.add(&mean)
    }

    /// The latent mean and std as `[1, z_dim, 1, 1, 1]` tensors in the dtype and on the device
    /// of `x` (small uploads), to broadcast over `[B, z_dim, T, h, w]`.
    fn latent_statistics(&self, x: &Tensor) -> Result<[Tensor; 2]> {
        let column = |v: &Vec<f32>| {
            Tensor::from_f32(v.clone(), [1, self.cfg.z_dim, 1, 1, 1])?
                .to_dtype(x.dtype())?
                .to_device(x.device())
        };
        Ok([
            column(&self.cfg.latents_mean)?,
            column(&self.cfg.latents_std)?,
        ])
    }

    fn check_latent(&self, z: &Tensor) -> Result<[usize; 5]> {
        let d = dims5(z)?;
        if d[1] != self.cfg.z_dim || d.contains(&0) || !z.dtype().is_float() {
            return Err(Error::ShapeMismatch {
                op: "Wan VAE decode",
                expected: format!(
                    "a float latent [B, {}, T, h, w] with no empty dim",
                    self.cfg.z_dim
                ),
                got: z.shape().clone(),
            });
        }
        Ok(d)
    }

    fn check_video(&self, v: &Tensor) -> Result<[usize; 5]> {
        let d = dims5(v)?;
        let (ts, s) = (self.time_stride(), self.space_stride());
        if d[1] != 3 || d.contains(&0) || !v.dtype().is_float() {
            return Err(Error::ShapeMismatch {
                op: "Wan VAE encode",
                expected: "a float video [B, 3, F, H, W] with no empty dim".into(),
                got: v.shape().clone(),
            });
        }
        if !(d[2] - 1).is_multiple_of(ts) {
            return Err(Error::InvalidArgument(format!(
                "Wan VAE encode: {} frames; the causal encoder needs 1 + {ts}·k frames (e.g. {} or {})",
                d[2],
                1 + (d[2] - 1) / ts * ts,
                1 + (d[2] - 1).div_ceil(ts) * ts
            )));
        }
        if !d[3].is_multiple_of(s) || !d[4].is_multiple_of(s) {
            return Err(Error::InvalidArgument(format!(
                "Wan VAE encode: frame size {}×{} (W×H) must be a multiple of {s} in both directions",
                d[4], d[3]
            )));
        }
        Ok(d)
    }
}

/// Checks what the layer lists index by: at least one stage, one temporal flag per resample,
/// latent statistics for every channel.
fn check_config(cfg: &VaeConfig) -> Result<()> {
    let stages = cfg.dim_mult.len();
    if stages == 0 || cfg.dim == 0 || cfg.z_dim == 0 || cfg.dim_mult.contains(&0) {
        return Err(Error::InvalidConfig(format!(
            "VAE dim {}, z_dim {}, dim_mult {:?}: all must be positive and dim_mult non-empty",
            cfg.dim, cfg.z_dim, cfg.dim_mult
        )));
    }
    if cfg.temperal_downsample.len() != stages - 1 {
        return Err(Error::InvalidConfig(format!(
            "temperal_downsample {:?} needs {} entries for dim_mult {:?}",
            cfg.temperal_downsample,
            stages - 1,
            cfg.dim_mult
        )));
    }
    if cfg.latents_mean.len() != cfg.z_dim || cfg.latents_std.len() != cfg.z_dim {
        return Err(Error::InvalidConfig(format!(
            "latents_mean/std need {} values each",
            cfg.z_dim
        )));
    }
    Ok(())
}

/// Converts video `[B, 3, F, H, W]` (any float dtype, in `[-1, 1]`) to 8-bit RGB frames
/// `[B·F, H, W, 3]` on the host (`[F, H, W, 3]` for one video): `round((x + 1)·127.5)` (ties to
/// even, as torch rounds), limited to `[0, 255]`. This is where decoded video leaves its
/// device: a device tensor is copied to the host once, for the frames' encoders.
pub fn to_rgb8(video: &Tensor) -> Result<Tensor> {
    let [b, c, f, h, w] = dims5(video)?;
    if c != 3 {
        return Err(Error::ShapeMismatch {
            op: "to_rgb8",
            expected: "a video [B, 3, F, H, W]".into(),
            got: video.shape().clone(),
        });
    }
    let x = video.to_device(Device::Cpu)?.to_f32_vec()?;
    let plane = h * w;
    let mut out = vec![0u8; b * f * plane * 3];
    for (i, px) in out.chunks_exact_mut(3).enumerate() {
        let (bf, p) = (i / plane, i % plane);
        let (bi, fi) = (bf / f, bf % f);
        for (ch, v) in px.iter_mut().enumerate() {
            let x = x[((bi * 3 + ch) * f + fi) * plane + p] as f64;
            *v = ((x + 1.0) * 127.5).round_ties_even().clamp(0.0, 255.0) as u8;
        }
    }
    Tensor::from_bytes(out, DType::U8, [b * f, h, w, 3])
}
