//! The Wan2.1 diffusion transformer (`WanModel`, wan-architecture.md §1), written against the
//! tensor ops.
//!
//! [`WanDit::new`] takes the canonical (original Wan) weights, kept in their stored dtype and
//! widened panel by panel by the linear ops, and a [`DitConfig`]. [`WanDit::forward`] maps a batch
//! of latents, timesteps and text contexts to flow velocities. The sampler hooks are
//! [`WanDit::encode_text`] (embed the text and optionally precompute every block's
//! cross-attention K/V once per prompt) with [`WanDit::forward_with`], whose
//! [`ForwardOptions`] carry NAG, skipped blocks (Skip Layer Guidance) and the TeaCache signals.

mod attention;
mod block;
pub(crate) mod embed;
mod nag;
mod params;
pub(crate) mod rope;
mod swap;
mod weights;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

pub use crate::io::config::DitConfig;
pub use attention::{AttentionChoice, SelfAttention, CPU_Q8_PATH, CUDA_Q8_PATH};
pub use block::backward::{Adapters, DeltaGrad, Tape, TrainableDelta, BLOCK_LINEARS};
pub use block::CrossKv;
pub use nag::NagParams;
pub use rope::RopeTable;
pub use weights::weight_shapes;
pub use weights::LinearDelta;
pub use weights::ParamUpdate;

use block::{Block, BlockInputs};
use swap::SwappedBlocks;
use weights::{Linear, Take};

use crate::backend::Device;
use crate::error::{Error, Result};
use crate::io::layout::{self, Component};
use crate::tensor::{DType, Tensor, Weight};

/// Which tensor [`ForwardOutput::signal`] returns for TeaCache (lora-guidance-training.md §3.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TeaCacheSignal {
    /// `e = time_embedding(sinusoid(t))`, `[B, dim]` (TeaCache's default indicator for Wan).
    TimeEmbedding,
    /// `e0 = time_projection(e)`, `[B, 6, dim]` (TeaCache's "ret_steps" mode).
    TimeProjection,
    /// The modulated input of block 0, `LN1(x)·(1 + scale1) + shift1`, `[B, S, dim]`.
    Block0Input,
}

/// Options of one forward pass. The default is the plain model.
#[derive(Debug, Clone, Default)]
pub struct ForwardOptions {
    /// Normalized Attention Guidance in every block's text cross-attention.
    pub nag: Option<NagParams>,
    /// Blocks not executed in this pass (`x_{i+1} = x_i`), for Skip Layer Guidance; applies to
    /// every sample of the batch.
    pub skip_blocks: Vec<usize>,
    /// Also return this TeaCache indicator in [`ForwardOutput::signal`].
    pub signal: Option<TeaCacheSignal>,
    /// TeaCache reuse: run no block and add this residual `[B, S, dim]` (a previous pass's
    /// [`ForwardOutput::residual`]) to the embedded patches instead.
    pub reuse_residual: Option<Tensor>,
    /// Return the blocks' total residual (output of the last block minus the patch embedding).
    pub return_residual: bool,
    /// How the blocks compute their self-attention.
    pub attention: SelfAttention,
}

/// What [`WanDit::forward_with`] returns.
#[derive(Debug, Clone)]
pub struct ForwardOutput {
    /// The flow velocity `[B, out_dim, T, H, W]`.
    pub velocity: Tensor,
    /// The TeaCache indicator asked for in [`ForwardOptions::signal`].
    pub signal: Option<Tensor>,
    /// The blocks' residual, when [`ForwardOptions::return_residual`] is set.
    pub residual: Option<Tensor>,
}

/// A text context prepared for the DiT: embedded and, optionally, turned into every block's
/// cross-attention keys and values (a sampler reuses it across steps).
#[derive(Debug, Clone)]
pub struct TextContext {
    /// `text_embedding` of the zero-padded contexts, `[B, text_len, dim]`.
    pub embedded: Tensor,
    /// Per block, the cross-attention K/V (`None`: computed in each forward).
    pub kv: Option<Vec<CrossKv>>,
}

/// The Wan2.1 T2V diffusion transformer.
#[derive(Debug)]
pub struct WanDit {
    cfg: DitConfig,
    patch_w: Weight,
    patch_b: Weight,
    text0: Linear,
    text2: Linear,
    time0: Linear,
    time2: Linear,
    time_proj: Linear,
    /// The resident blocks: all of them, or the first ones when the last are swapped.
    blocks: Vec<Block>,
    /// The last blocks, in pinned host memory and streamed in (low-VRAM mode).
    swapped: Option<SwappedBlocks>,
    /// `[1, 2, dim]` f32: shift, scale of the head.
    head_modulation: Tensor,
    head: Linear,
    /// The RoPE table of the last grid (a sampler runs one grid for all steps).
    rope: Mutex<Option<Arc<RopeTable>>>,
}

impl WanDit {
    /// Builds the model from canonical weights (original Wan names, wan-architecture.md §1.2) and
    /// its config. Every tensor's shape is checked against the config (a mismatch is
    /// [`Error::InvalidConfig`], a missing tensor [`Error::MissingTensor`]).
    pub fn new(weights: BTreeMap<String, Weight>, cfg: DitConfig) -> Result<WanDit> {
        cfg.ensure_supported()?;
        check_config(&cfg)?;
        let (dim, [pt, ph, pw]) = (cfg.dim, cfg.patch_size);
        let mut t = Take::new(weights);
        let patch_w = t.weight("patch_embedding.weight", &[dim, cfg.in_dim, pt, ph, pw])?;
        let patch_b = t.weight("patch_embedding.bias", &[dim])?;
        let text0 = t.linear("text_embedding.0", dim, cfg.text_dim)?;
        let text2 = t.linear("text_embedding.2", dim, dim)?;
        let time0 = t.linear("time_embedding.0", dim, cfg.freq_dim)?;
        let time2 = t.linear("time_embedding.2", dim, dim)?;
        let time_proj = t.linear("time_projection.1", 6 * dim, dim)?;
        let blocks = (0..cfg.num_layers)
            .map(|i| Block::load(&mut t, i, &cfg))
            .collect::<Result<Vec<_>>>()?;
        let head_modulation = t.f32_tensor("head.modulation", &[1, 2, dim])?;
        let head = t.linear("head.head", pt * ph * pw * cfg.out_dim, dim)?;
        t.finish(&cfg)?;
        Ok(WanDit {
            cfg,
            patch_w,
            patch_b,
            text0,
            text2,
            time0,
            time2,
            time_proj,
            blocks,
            swapped: None,
            head_modulation,
            head,
            rope: Mutex::new(None),
        })
    }

    /// Opens a DiT checkpoint (a file or a sharded folder, in any layout and dtype the io
    /// module reads), renames it to the canonical names and builds the model, with the config
    /// inferred from the shapes and overridden by `config_json` (a Wan `config.json`) if given.
    pub fn open(path: impl AsRef<Path>, config_json: Option<&Path>) -> Result<WanDit> {
        let (weights, cfg) = WanDit::read_weights(path, config_json)?;
        WanDit::new(weights, cfg)
    }

    /// What [`WanDit::open`] builds the model from: the canonical weights of a DiT checkpoint
    /// and its config (for callers that change the weights first, such as LoRA merging).
    pub fn read_weights(
        path: impl AsRef<Path>,
        config_json: Option<&Path>,
    ) -> Result<(BTreeMap<String, Weight>, DitConfig)> {
        let path = path.as_ref();
        let (found, weights) = layout::canonical_weights(&crate::io::open(path)?)?;
        if !matches!(found.component, Component::Dit(_)) {
            return Err(Error::UnsupportedModel(format!(
                "{}: a {:?}, not a Wan DiT",
                path.display(),
                found.component
            )));
        }
        let cfg = DitConfig::load(&layout::weight_metas(&weights), config_json)?;
        Ok((weights, cfg))
    }

    /// Attaches unmerged low-rank deltas (LoRAs applied on the fly) to the linear layers named
    /// by their canonical module path (`blocks.0.self_attn.q`, `head.head` …), replacing any
    /// attached before; layers not named get none. Fails, changing nothing, on a name that is
    /// not a linear layer of the model or a delta of the wrong shape. Text contexts prepared
    /// with cached K/V before the change must be prepared again.
    pub fn set_linear_deltas(&mut self, mut deltas: BTreeMap<String, LinearDelta>) -> Result<()> {
        if self.swapped.is_some() && !deltas.is_empty() {
            return Err(Error::InvalidArgument(
                "low-rank deltas on a DiT with swapped blocks: merge the LoRAs instead".into(),
            ));
        }
        let mut linears = self.linears_mut();
        for (name, d) in &deltas {
            let Some((_, lin)) = linears.iter().find(|(n, _)| n == name) else {
                return Err(Error::InvalidArgument(format!(
                    "low-rank delta for `{name}`, which is not a linear layer of the DiT"
                )));
            };
            if lin.w.dims() != d.weight_dims() {
                return Err(Error::ShapeMismatch {
                    op: "WanDit::set_linear_deltas",
                    expected: format!("a delta for `{name}` of shape {:?}", lin.w.dims()),
                    got: d.weight_dims().into(),
                });
            }
        }
        for (name, lin) in &mut linears {
            lin.delta = deltas.remove(name.as_str());
        }
        Ok(())
    }

    /// Every linear layer with its canonical module path.
    fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut out: Vec<(String, &mut Linear)> = vec![
            ("text_embedding.0".into(), &mut self.text0),
            ("text_embedding.2".into(), &mut self.text2),
            ("time_embedding.0".into(), &mut self.time0),
            ("time_embedding.2".into(), &mut self.time2),
            ("time_projection.1".into(), &mut self.time_proj),
            ("head.head".into(), &mut self.head),
        ];
        for (i, b) in self.blocks.iter_mut().enumerate() {
            out.extend(
                b.linears_mut()
                    .into_iter()
                    .map(|(n, l)| (format!("blocks.{i}.{n}"), l)),
            );
        }
        out
    }

    /// The stored dtype of the blocks' weights (the bulk of the model), as loaded: `bf16`,
    /// `fp8 e4m3fn`, ... (the head and embeddings may differ).
    pub fn weight_dtype(&self) -> DType {
        self.blocks
            .first()
            .map_or(self.head.w.dtype(), Block::weight_dtype)
    }

    /// The config.
    pub fn config(&self) -> &DitConfig {
        &self.cfg
    }

    /// The device holding the parameters (where a forward runs).
    pub fn device(&self) -> Device {
        self.head_modulation.device()
    }

    /// The model with every parameter on `device` in its stored dtype (bf16, fp8 and scaled fp8
    /// stay so; nothing is widened to f32 on the way), attached low-rank deltas included. A
    /// forward then runs there: the latent, the text contexts and a reused TeaCache residual
    /// must be on that device too (the caller moves them, [`Tensor::to_device`]); the model
    /// itself uploads only what it computes on the host (the sinusoid of the timesteps, the
    /// RoPE tables once per grid) and downloads nothing.
    pub fn to_device(&self, device: Device) -> Result<WanDit> {
        self.to_device_with_swap(device, 0)
    }

    /// [`WanDit::to_device`] in low-VRAM mode: the last `swap` blocks stay in pinned host memory
    /// and are streamed to the CUDA `device` for each pass over the blocks, each while the
    /// block before it computes (their bytes never all on the device at once). The forward
    /// computes the same bits as with every block resident. Fails for `swap > 0` on the CPU,
    /// above the block count, for blocks carrying unmerged LoRA deltas, or for a model whose
    /// blocks are swapped already.
    pub fn to_device_with_swap(&self, device: Device, swap: usize) -> Result<WanDit> {
        let total = self.cfg.num_layers;
        if self.swapped.is_some() || swap > total {
            return Err(Error::InvalidArgument(format!(
                "swapping {swap} blocks of a DiT with {total} ({} swapped already)",
                self.swapped_blocks()
            )));
        }
        let swapped = match (swap, device) {
            (0, _) => None,
            (_, Device::Cuda(ordinal)) => Some(SwappedBlocks::new(
                self.blocks[total - swap..].to_vec(),
                total,
                ordinal,
            )?),
            (_, Device::Cpu) => {
                return Err(Error::InvalidArgument(
                    "blocks_to_swap applies to a DiT on a CUDA device".into(),
                ))
            }
        };
        let lin = |l: &Linear| l.to_device(device);
        Ok(WanDit {
            cfg: self.cfg.clone(),
            patch_w: self.patch_w.to_device(device)?,
            patch_b: self.patch_b.to_device(device)?,
            text0: lin(&self.text0)?,
            text2: lin(&self.text2)?,
            time0: lin(&self.time0)?,
            time2: lin(&self.time2)?,
            time_proj: lin(&self.time_proj)?,
            blocks: self.blocks[..total - swap]
                .iter()
                .map(|b| b.to_device(device))
                .collect::<Result<Vec<_>>>()?,
            swapped,
            head_modulation: self.head_modulation.to_device(device)?,
            head: lin(&self.head)?,
            rope: Mutex::new(None),
        })
    }

    /// The velocity for a batch: `latent [B, in_dim, T, H, W]` (f32; `T, H, W` multiples of the
    /// patch size), one timestep per sample (the scheduler's value, e.g. 999.0), and one unpadded
    /// context `[L_b, text_dim]` (`L_b <= text_len`) per sample. Returns `[B, out_dim, T, H, W]`.
    pub fn forward(
        &self,
        latent: &Tensor,
        timesteps: &[f32],
        context: &[Tensor],
        opts: &ForwardOptions,
    ) -> Result<Tensor> {
        if latent.dims().first() != Some(&context.len()) {
            return Err(Error::InvalidArgument(format!(
                "{} contexts for a latent batch of shape {}",
                context.len(),
                latent.shape()
            )));
        }
        let text = self.encode_text(context, false)?;
        Ok(self.forward_with(latent, timesteps, &text, opts)?.velocity)
    }

    /// Pads each context `[L_b, text_dim]` to `text_len` with zero rows and applies
    /// `text_embedding`; with `cache_kv`, also computes every block's cross-attention K/V so
    /// that forwards over many steps skip them.
    pub fn encode_text(&self, context: &[Tensor], cache_kv: bool) -> Result<TextContext> {
        if context.is_empty() {
            return Err(Error::InvalidArgument(
                "WanDit: empty batch of contexts".into(),
            ));
        }
        let c = &self.cfg;
        if let Some(bad) = context.iter().find(|t| t.dtype() != DType::F32) {
            return Err(Error::UnsupportedDType {
                op: "WanDit context",
                dtype: bad.dtype(),
            });
        }
        let padded = embed::pad_contexts(context, c.text_len, c.text_dim)?;
        let embedded = self
            .text2
            .forward(&self.text0.forward(&padded)?.gelu_tanh()?)?;
        let kv = if cache_kv {
            let mut kv = Vec::with_capacity(self.cfg.num_layers);
            self.each_block(&mut |_, b| {
                kv.push(b.cross_kv(&embedded)?);
                Ok(())
            })?;
            Some(kv)
        } else {
            None
        };
        Ok(TextContext { embedded, kv })
    }

    /// The forward pass on a prepared text context, with the sampler hooks of `opts`.
    pub fn forward_with(
        &self,
        latent: &Tensor,
        timesteps: &[f32],
        text: &TextContext,
        opts: &ForwardOptions,
    ) -> Result<ForwardOutput> {
        let grid = self.check_inputs(latent, timesteps, text, opts)?;
        let batch = timesteps.len();
        let dim = self.cfg.dim;

        // Time embedding (f32; the sinusoid in f64) and the 6-way projection.
        let sin = embed::sinusoid(timesteps, self.cfg.freq_dim)?.to_device(self.device())?;
        let e = self
            .time2
            .forward_f32(&self.time0.forward_f32(&sin)?.silu()?)?;
        let e0 = self
            .time_proj
            .forward_f32(&e.silu()?)?
            .reshape([batch, 6, dim])?;

        let x0 = embed::patchify(latent, &self.patch_w, &self.patch_b, self.cfg.patch_size)?;
        let signal = match opts.signal {
            None => None,
            Some(TeaCacheSignal::TimeEmbedding) => Some(e.clone()),
            Some(TeaCacheSignal::TimeProjection) => Some(e0.clone()),
            Some(TeaCacheSignal::Block0Input) => {
                Some(self.with_block(0, |b| b.modulated_input(&x0, &e0))?)
            }
        };

        // The patch embedding is kept past the blocks only when its residual is asked for.
        let x_in = opts.return_residual.then(|| x0.clone());
        let x = match &opts.reuse_residual {
            Some(r) => x0.add(r)?,
            None => self.run_blocks(x0, &e0, grid, text, opts)?,
        };
        let residual = x_in.map(|x0| x.sub(&x0)).transpose()?;

        // Head (f32): modulated by `e` (not `e0`), then unpatchify.
        let hm = self
            .head_modulation
            .add(&e.reshape([batch, 1, dim])?)?
            .chunk(2, 1)?;
        let y = x
            .layer_norm(None, None, self.cfg.eps as f32)?
            .mul(&hm[1].affine(1.0, 1.0)?)?
            .add(&hm[0])?;
        let y = self.head.forward_f32(&y)?;
        let velocity = embed::unpatchify(&y, grid, self.cfg.patch_size, self.cfg.out_dim)?;
        Ok(ForwardOutput {
            velocity,
            signal,
            residual,
        })
    }

    fn run_blocks(
        &self,
        x: Tensor,
        e0: &Tensor,
        grid: [usize; 3],
        text: &TextContext,
        opts: &ForwardOptions,
    ) -> Result<Tensor> {
        let rope = self.rope_table(grid)?;
        let mut x = x;
        self.each_block(&mut |i, block| {
            if opts.skip_blocks.contains(&i) {
                return Ok(());
            }
            let kv = text_kv(block, text, i)?;
            let neg_kv = match &opts.nag {
                Some(n) => Some((n, text_kv(block, &n.negative_context, i)?)),
                None => None,
            };
            let inputs = BlockInputs {
                e0,
                rope: &rope,
                kv: &kv,
                nag: neg_kv.as_ref().map(|(n, kv)| (*n, kv)),
                attention: opts.attention,
            };
            x = block.forward(&x, &inputs)?;
            Ok(())
        })?;
        Ok(x)
    }

    /// `f(i, block)` for every block in order, the swapped ones streamed in.
    fn each_block(&self, f: &mut dyn FnMut(usize, &Block) -> Result<()>) -> Result<()> {
        match &self.swapped {
            Some(s) => s.each_block(&self.blocks, f),
            None => self
                .blocks
                .iter()
                .enumerate()
                .try_for_each(|(i, b)| f(i, b)),
        }
    }

    /// `f(block index)`, a swapped block copied in for it.
    fn with_block<R>(&self, index: usize, f: impl FnOnce(&Block) -> Result<R>) -> Result<R> {
        match self.blocks.get(index) {
            Some(b) => f(b),
            None => match &self.swapped {
                Some(s) if index < self.cfg.num_layers => f(&s.fetch(index - self.blocks.len())?),
                _ => Err(Error::InvalidArgument(format!(
                    "block {index} of a model with {} blocks",
                    self.cfg.num_layers
                ))),
            },
        }
    }

    /// How many blocks live in pinned host memory ([`WanDit::to_device_with_swap`]).
    pub fn swapped_blocks(&self) -> usize {
        self.swapped.as_ref().map_or(0, SwappedBlocks::len)
    }

    /// Runs block `index` alone on the hidden state `x [B, S, dim]` of a token grid `grid`
    /// (`S = grid[0]·grid[1]·grid[2]`), with the time projection `e0 [B, 6, dim]` and a prepared
    /// text context of `B` samples. For benchmarks and per-block tooling: the same code as a
    /// block of [`WanDit::forward_with`], with no embedding or head around it.
    pub fn block_forward(
        &self,
        index: usize,
        x: &Tensor,
        e0: &Tensor,
        grid: [usize; 3],
        text: &TextContext,
    ) -> Result<Tensor> {
        if index >= self.cfg.num_layers {
            return Err(Error::InvalidArgument(format!(
                "block {index} of a model with {} blocks",
                self.cfg.num_layers
            )));
        }
        let (b, s, dim) = (
            x.dims().first().copied().unwrap_or(0),
            grid.iter().product(),
            self.cfg.dim,
        );
        self.check_text(text, b, "WanDit::block_forward text context")?;
        for (t, want, op) in [
            (x, [b, s, dim], "block_forward x"),
            (e0, [b, 6, dim], "block_forward e0"),
        ] {
            if t.dims() != want || t.dtype() != DType::F32 {
                return Err(Error::ShapeMismatch {
                    op,
                    expected: format!("f32 {want:?}"),
                    got: t.shape().clone(),
                });
            }
        }
        let rope = self.rope_table(grid)?;
        self.with_block(index, |block| {
            let kv = text_kv(block, text, index)?;
            let inputs = BlockInputs {
                e0,
                rope: &rope,
                kv: &kv,
                nag: None,
                attention: SelfAttention::Exact,
            };
            block.forward(x, &inputs)
        })
    }

    /// The RoPE table for `grid`, reused while the grid stays the same.
    fn rope_table(&self, grid: [usize; 3]) -> Result<Arc<RopeTable>> {
        let mut cached = self.rope.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = cached.as_ref().filter(|t| t.grid == grid) {
            return Ok(t.clone());
        }
        let t = Arc::new(RopeTable::new(grid, self.cfg.head_dim())?.to_device(self.device())?);
        *cached = Some(t.clone());
        Ok(t)
    }

    /// Validates the inputs of a forward; returns the token grid.
    fn check_inputs(
        &self,
        latent: &Tensor,
        timesteps: &[f32],
        text: &TextContext,
        opts: &ForwardOptions,
    ) -> Result<[usize; 3]> {
        let c = &self.cfg;
        if latent.dtype() != DType::F32 {
            return Err(Error::UnsupportedDType {
                op: "WanDit latent",
                dtype: latent.dtype(),
            });
        }
        let d = latent.dims();
        let p = c.patch_size;
        let ok = d.len() == 5
            && d[0] > 0
            && d[1] == c.in_dim
            && (2..5).all(|i| d[i] > 0 && d[i].is_multiple_of(p[i - 2]));
        if !ok {
            return Err(Error::ShapeMismatch {
                op: "WanDit latent",
                expected: format!(
                    "[B, {}, T, H, W] with T, H, W non-zero multiples of {p:?}",
                    c.in_dim
                ),
                got: latent.shape().clone(),
            });
        }
        let batch = d[0];
        if timesteps.len() != batch {
            return Err(Error::InvalidArgument(format!(
                "{} timesteps for a batch of {batch}",
                timesteps.len()
            )));
        }
        if let Some(t) = timesteps.iter().find(|t| !t.is_finite()) {
            return Err(Error::InvalidArgument(format!(
                "timestep {t} is not a finite number"
            )));
        }
        self.check_text(text, batch, "WanDit text context")?;
        if let Some(&i) = opts.skip_blocks.iter().find(|&&i| i >= self.cfg.num_layers) {
            return Err(Error::InvalidArgument(format!(
                "skip block {i} of a model with {} blocks",
                self.cfg.num_layers
            )));
        }
        if let Some(n) = &opts.nag {
            n.validate(batch)?;
            self.check_text(&n.negative_context, 1, "WanDit NAG negative context")?;
        }
        let grid = [d[2] / p[0], d[3] / p[1], d[4] / p[2]];
        if let Some(r) = &opts.reuse_residual {
            let s = grid.iter().product::<usize>();
            if r.dims() != [batch, s, c.dim] {
                return Err(Error::ShapeMismatch {
                    op: "WanDit reuse_residual",
                    expected: format!("[{batch}, {s}, {}]", c.dim),
                    got: r.shape().clone(),
                });
            }
        }
        Ok(grid)
    }

    /// Checks that `text` holds `batch` contexts embedded by this model.
    fn check_text(&self, text: &TextContext, batch: usize, op: &'static str) -> Result<()> {
        let c = &self.cfg;
        if text.embedded.dims() != [batch, c.text_len, c.dim] {
            return Err(Error::ShapeMismatch {
                op,
                expected: format!(
                    "{batch} contexts embedded as [{batch}, {}, {}]",
                    c.text_len, c.dim
                ),
                got: text.embedded.shape().clone(),
            });
        }
        if text
            .kv
            .as_ref()
            .is_some_and(|kv| kv.len() != self.cfg.num_layers)
        {
            return Err(Error::InvalidArgument(format!(
                "{op}: its K/V cache is for another model"
            )));
        }
        Ok(())
    }
}

/// Block `i`'s cross-attention K/V of `text`: cached, or computed now.
fn text_kv(block: &Block, text: &TextContext, i: usize) -> Result<CrossKv> {
    match &text.kv {
        Some(kv) => Ok(kv[i].clone()),
        None => block.cross_kv(&text.embedded),
    }
}

/// Rejects configs the model cannot run.
fn check_config(c: &DitConfig) -> Result<()> {
    let sizes = [
        c.dim,
        c.ffn_dim,
        c.num_heads,
        c.num_layers,
        c.in_dim,
        c.out_dim,
        c.text_dim,
        c.freq_dim,
        c.text_len,
    ];
    if sizes.contains(&0) || c.patch_size.contains(&0) {
        return Err(Error::InvalidConfig(format!("zero size in {c:?}")));
    }
    if !c.dim.is_multiple_of(c.num_heads) || !c.head_dim().is_multiple_of(2) {
        return Err(Error::InvalidConfig(format!(
            "dim {} must split into {} heads of an even size",
            c.dim, c.num_heads
        )));
    }
    if !c.freq_dim.is_multiple_of(2) {
        return Err(Error::InvalidConfig(format!(
            "freq_dim {} must be even",
            c.freq_dim
        )));
    }
    if !(c.eps as f32 > 0.0 && c.eps.is_finite()) {
        return Err(Error::InvalidConfig(format!(
            "eps {} must be positive",
            c.eps
        )));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::io::config::ModelType;

    /// A tiny DiT config with `layers` blocks (for the unit tests here and in `train`).
    pub(crate) fn tiny(layers: usize) -> DitConfig {
        DitConfig {
            model_type: ModelType::T2v,
            dim: 16,
            ffn_dim: 40,
            num_heads: 2,
            num_layers: layers,
            in_dim: 4,
            out_dim: 4,
            text_dim: 12,
            freq_dim: 8,
            text_len: 6,
            eps: 1e-6,
            patch_size: [1, 2, 2],
        }
    }

    fn noise(dims: &[usize], seed: &mut u32) -> Tensor {
        let v = (0..dims.iter().product())
            .map(|_| {
                *seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
                (*seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect();
        Tensor::from_f32(v, dims).unwrap()
    }

    #[test]
    fn weight_shapes_are_exactly_what_the_model_takes() {
        let cfg = tiny(1);
        let mut seed = 3;
        let mut w: BTreeMap<String, Weight> = weight_shapes(&cfg)
            .into_iter()
            .map(|(n, d)| (n, Weight::new(noise(&d, &mut seed))))
            .collect();
        assert!(WanDit::new(w.clone(), cfg.clone()).is_ok());
        w.pop_first();
        assert!(matches!(
            WanDit::new(w, cfg),
            Err(Error::MissingTensor { .. })
        ));
    }

    /// `block_forward` is the block of a forward: for one layer, its output minus the patch
    /// embedding is the forward's residual (batch 2, so the generic modulation path runs too).
    #[test]
    fn block_forward_is_the_forward_block() {
        let cfg = tiny(1);
        let mut seed = 5;
        let w = weight_shapes(&cfg)
            .into_iter()
            .map(|(n, d)| (n, Weight::new(noise(&d, &mut seed))))
            .collect();
        let dit = WanDit::new(w, cfg.clone()).unwrap();
        for batch in [1, 2] {
            let latent = noise(&[batch, 4, 2, 4, 6], &mut seed);
            let ctx: Vec<Tensor> = (0..batch).map(|_| noise(&[3, 12], &mut seed)).collect();
            let text = dit.encode_text(&ctx, false).unwrap();
            let opts = ForwardOptions {
                signal: Some(TeaCacheSignal::TimeProjection),
                return_residual: true,
                ..Default::default()
            };
            let steps = vec![700.0; batch];
            let out = dit.forward_with(&latent, &steps, &text, &opts).unwrap();
            let e0 = out.signal.unwrap();
            let x0 = embed::patchify(&latent, &dit.patch_w, &dit.patch_b, cfg.patch_size).unwrap();
            let y = dit.block_forward(0, &x0, &e0, [2, 2, 3], &text).unwrap();
            let got = y.sub(&x0).unwrap().to_f32_vec().unwrap();
            let want = out.residual.unwrap().to_f32_vec().unwrap();
            assert_eq!(got, want, "batch {batch}");
            let bad = dit.block_forward(0, &x0, &e0, [2, 2, 2], &text);
            assert!(matches!(bad, Err(Error::ShapeMismatch { .. })));
            assert!(dit.block_forward(1, &x0, &e0, [2, 2, 3], &text).is_err());
        }
    }

    /// Moving the model keeps every weight's stored dtype; on the CPU the forward is the same
    /// bits, and a CUDA device that cannot be used is a typed error.
    #[test]
    fn to_device_keeps_stored_dtypes_and_the_forward() {
        let cfg = tiny(1);
        let mut seed = 9;
        let w = weight_shapes(&cfg)
            .into_iter()
            .map(|(n, d)| {
                let t = noise(&d, &mut seed).to_dtype(DType::BF16).unwrap();
                (n, Weight::new(t))
            })
            .collect();
        let dit = WanDit::new(w, cfg).unwrap();
        let moved = dit.to_device(Device::Cpu).unwrap();
        assert_eq!(
            (moved.device(), moved.weight_dtype()),
            (Device::Cpu, DType::BF16)
        );
        let latent = noise(&[1, 4, 1, 4, 4], &mut seed);
        let ctx = [noise(&[2, 12], &mut seed)];
        let run = |m: &WanDit| {
            m.forward(&latent, &[500.0], &ctx, &ForwardOptions::default())
                .unwrap()
                .to_f32_vec()
                .unwrap()
        };
        assert_eq!(run(&dit), run(&moved));
        if crate::backend::cuda::list_devices().map_or(true, |d| d.is_empty()) {
            let e = dit.to_device(Device::Cuda(0)).unwrap_err();
            assert!(
                matches!(e, Error::CudaNotCompiled | Error::Device(_)),
                "{e}"
            );
        }
    }
}
