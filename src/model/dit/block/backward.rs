//! The DiT's backward pass to trainable low-rank adapters on its block linears, for LoRA
//! training (lora-guidance-training.md §4.1), written against the tensor ops.
//!
//! [`WanDit::train_forward`] runs the forward pass with an adapter `y += scale · up(down(x))` on
//! any block linear and keeps only each block's input (gradient checkpointing per block);
//! [`WanDit::train_backward`] recomputes one block at a time with its activations and
//! back-propagates the velocity gradient through the head and every block, returning the
//! gradient of every adapter's `down` and `up`. The base weights stay frozen in their stored
//! dtype (bf16 and fp8 bases are widened panel by panel as in the forward).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::super::embed;
use super::super::rope::RopeTable;
use super::super::weights::Linear;
use super::super::{TextContext, WanDit};
use super::{Block, CrossKv};
use crate::error::{Error, Result};
use crate::tensor::ops::{attention, attention_backward};
use crate::tensor::{DType, Tensor, Weight};

/// A trainable low-rank adapter on one linear layer: `y = W x + b + scale · up(down(x))`.
#[derive(Debug, Clone)]
pub struct TrainableDelta {
    /// `[rank, in]`, f32.
    pub down: Tensor,
    /// `[out, rank]`, f32.
    pub up: Tensor,
    /// The multiplier of the adapter's output (`alpha / rank` for a LoRA).
    pub scale: f32,
}

/// The gradient of the loss with respect to one [`TrainableDelta`].
#[derive(Debug, Clone)]
pub struct DeltaGrad {
    /// `d loss / d down`, `[rank, in]`.
    pub down: Tensor,
    /// `d loss / d up`, `[out, rank]`.
    pub up: Tensor,
}

/// Trainable adapters by canonical module path (`blocks.0.self_attn.q`, `blocks.1.ffn.2` …).
pub type Adapters = BTreeMap<String, TrainableDelta>;

/// What [`WanDit::train_forward`] keeps for [`WanDit::train_backward`]: each block's input, the
/// last block's output and the conditioning (time embedding, text, RoPE table).
#[derive(Debug)]
pub struct Tape {
    grid: [usize; 3],
    e: Tensor,
    e0: Tensor,
    rope: Arc<RopeTable>,
    text: Tensor,
    block_inputs: Vec<Tensor>,
    last: Tensor,
}

impl WanDit {
    /// The velocity `[B, out_dim, T, H, W]` of `latent` at `timesteps` on the embedded `text`
    /// (as [`WanDit::forward_with`] without options), with `adapters` applied, and the tape
    /// [`WanDit::train_backward`] needs. Adapters may only name block linears; the model must
    /// have no unmerged deltas attached.
    pub fn train_forward(
        &self,
        latent: &Tensor,
        timesteps: &[f32],
        text: &TextContext,
        adapters: &Adapters,
    ) -> Result<(Tensor, Tape)> {
        self.check_adapters(adapters)?;
        let grid = self.check_inputs(latent, timesteps, text, &Default::default())?;
        let (e, e0) = self.time_embedding(timesteps)?;
        let mut x = embed::patchify(latent, &self.patch_w, &self.patch_b, self.cfg.patch_size)?;
        let rope = self.rope_table(grid)?;
        let mut block_inputs = Vec::with_capacity(self.blocks.len());
        let cond = Cond {
            e0: &e0,
            rope: &rope,
            text: &text.embedded,
        };
        for (i, block) in self.blocks.iter().enumerate() {
            let ad = BlockAdapters {
                index: i,
                all: adapters,
            };
            let y = block.train_forward(&x, &cond, &ad)?.y;
            block_inputs.push(std::mem::replace(&mut x, y));
        }
        let velocity = self.head_forward(&x, &e, grid)?;
        let tape = Tape {
            grid,
            e,
            e0,
            rope,
            text: text.embedded.clone(),
            block_inputs,
            last: x,
        };
        Ok((velocity, tape))
    }

    /// Back-propagates `d_velocity` (the loss gradient of [`WanDit::train_forward`]'s velocity)
    /// to every adapter, recomputing each block's activations from its saved input.
    pub fn train_backward(
        &self,
        tape: Tape,
        d_velocity: &Tensor,
        adapters: &Adapters,
    ) -> Result<BTreeMap<String, DeltaGrad>> {
        let mut grads = BTreeMap::new();
        let mut dx = self.head_backward(&tape, d_velocity)?;
        let cond = Cond {
            e0: &tape.e0,
            rope: &tape.rope,
            text: &tape.text,
        };
        for (i, (block, x)) in self.blocks.iter().zip(&tape.block_inputs).enumerate().rev() {
            let ad = BlockAdapters {
                index: i,
                all: adapters,
            };
            let saved = block.train_forward(x, &cond, &ad)?;
            dx = block.train_backward(&saved, &dx, &cond, &ad, &mut grads)?;
        }
        Ok(grads)
    }

    /// `e = time_embedding(sinusoid(t))` `[B, dim]` and `e0 = time_projection(e)` `[B, 6, dim]`.
    fn time_embedding(&self, timesteps: &[f32]) -> Result<(Tensor, Tensor)> {
        let sin = embed::sinusoid(timesteps, self.cfg.freq_dim)?;
        let e = self.time2.forward(&self.time0.forward(&sin)?.silu()?)?;
        let e0 = self.time_proj.forward(&e.silu()?)?;
        let e0 = e0.reshape([timesteps.len(), 6, self.cfg.dim])?;
        Ok((e, e0))
    }

    /// The head's `(shift, scale)`, each `[B, 1, dim]`.
    fn head_mod(&self, e: &Tensor) -> Result<Vec<Tensor>> {
        let b = e.dims()[0];
        self.head_modulation
            .add(&e.reshape([b, 1, self.cfg.dim])?)?
            .chunk(2, 1)
    }

    fn head_forward(&self, x: &Tensor, e: &Tensor, grid: [usize; 3]) -> Result<Tensor> {
        let hm = self.head_mod(e)?;
        let y = x
            .layer_norm(None, None, self.cfg.eps as f32)?
            .mul(&hm[1].affine(1.0, 1.0)?)?
            .add(&hm[0])?;
        let y = self.head.forward(&y)?;
        embed::unpatchify(&y, grid, self.cfg.patch_size, self.cfg.out_dim)
    }

    /// The gradient at the last block's output, from the velocity's.
    fn head_backward(&self, tape: &Tape, d_velocity: &Tensor) -> Result<Tensor> {
        let x = &tape.last;
        let (b, [f, hh, ww]) = (x.dims()[0], tape.grid);
        let ([pt, ph, pw], c) = (self.cfg.patch_size, self.cfg.out_dim);
        let want = [b, c, f * pt, hh * ph, ww * pw];
        if d_velocity.dims() != want {
            return Err(Error::ShapeMismatch {
                op: "WanDit::train_backward",
                expected: format!("a velocity gradient of shape {want:?}"),
                got: d_velocity.shape().clone(),
            });
        }
        // The inverse of `unpatchify`'s permutation.
        let dy = d_velocity
            .reshape([b, c, f, pt, hh, ph, ww, pw])?
            .permute(&[0, 2, 4, 6, 3, 5, 7, 1])?
            .reshape([b, f * hh * ww, pt * ph * pw * c])?;
        let dn = dy
            .linear_backward_input(&self.head.w)?
            .mul(&self.head_mod(&tape.e)?[1].affine(1.0, 1.0)?)?;
        x.layer_norm_backward(&dn, None, self.cfg.eps as f32)
    }

    /// Checks that every adapter names a block linear of this model, with matching shapes, and
    /// that no unmerged delta is attached (its backward is not implemented).
    fn check_adapters(&self, adapters: &Adapters) -> Result<()> {
        let mut shapes = BTreeMap::new();
        let mut attached = false;
        for (i, b) in self.blocks.iter().enumerate() {
            for n in BLOCK_LINEARS {
                let l = b.linear(n);
                attached |= l.delta.is_some();
                shapes.insert(format!("blocks.{i}.{n}"), l.w.dims().to_vec());
            }
        }
        if attached {
            return Err(Error::InvalidArgument(
                "training needs a DiT without unmerged deltas attached".into(),
            ));
        }
        for (name, d) in adapters {
            let Some(w) = shapes.get(name) else {
                return Err(Error::InvalidArgument(format!(
                    "trainable adapter on `{name}`, which is not a linear layer of a DiT block"
                )));
            };
            let (dd, ud) = (d.down.dims(), d.up.dims());
            let ok =
                dd.len() == 2 && ud.len() == 2 && dd[0] == ud[1] && ud[0] == w[0] && dd[1] == w[1];
            if !ok || d.down.dtype() != DType::F32 || d.up.dtype() != DType::F32 {
                return Err(Error::ShapeMismatch {
                    op: "WanDit trainable adapter",
                    expected: format!(
                        "f32 down [rank, {}] and up [{}, rank] for `{name}`",
                        w[1], w[0]
                    ),
                    got: d.down.shape().clone(),
                });
            }
        }
        Ok(())
    }
}

/// What every block is conditioned on: `e0 [B, 6, dim]`, the RoPE table, the embedded text.
#[derive(Clone, Copy)]
struct Cond<'a> {
    e0: &'a Tensor,
    rope: &'a RopeTable,
    text: &'a Tensor,
}

/// The adapters of block `index`.
struct BlockAdapters<'a> {
    index: usize,
    all: &'a Adapters,
}

impl BlockAdapters<'_> {
    fn get(&self, name: &str) -> Option<&TrainableDelta> {
        self.all.get(&format!("blocks.{}.{name}", self.index))
    }
}

/// A block linear with its adapter, if any.
struct Adapted<'a> {
    name: &'static str,
    lin: &'a Linear,
    delta: Option<&'a TrainableDelta>,
}

impl Adapted<'_> {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.lin.forward(x)?;
        match self.delta {
            None => Ok(y),
            Some(d) => {
                let h = x.linear(&Weight::new(d.down.clone()), None)?;
                y.add(
                    &h.linear(&Weight::new(d.up.clone()), None)?
                        .affine(d.scale, 0.0)?,
                )
            }
        }
    }

    /// The input gradient for the output gradient `dy` at input `x`; records the adapter's
    /// gradient (see [`Adapted::record`]).
    fn backward(
        &self,
        x: &Tensor,
        dy: &Tensor,
        index: usize,
        grads: &mut BTreeMap<String, DeltaGrad>,
    ) -> Result<Tensor> {
        let dx = dy.linear_backward_input(&self.lin.w)?;
        match (self.record(x, dy, index, grads)?, self.delta) {
            (Some(dh), Some(d)) => dx.add(&dh.linear_backward_input(&Weight::new(d.down.clone()))?),
            _ => Ok(dx),
        }
    }

    /// Records the adapter's gradient under `blocks.{index}.{name}` and returns the gradient at
    /// its rank-wide hidden layer (scale included); nothing without an adapter.
    fn record(
        &self,
        x: &Tensor,
        dy: &Tensor,
        index: usize,
        grads: &mut BTreeMap<String, DeltaGrad>,
    ) -> Result<Option<Tensor>> {
        let Some(d) = self.delta else {
            return Ok(None);
        };
        let h = x.linear(&Weight::new(d.down.clone()), None)?;
        let up = dy.linear_backward_weight(&h)?.affine(d.scale, 0.0)?;
        let dh = dy
            .linear_backward_input(&Weight::new(d.up.clone()))?
            .affine(d.scale, 0.0)?;
        let down = dh.linear_backward_weight(x)?;
        grads.insert(
            format!("blocks.{index}.{}", self.name),
            DeltaGrad { down, up },
        );
        Ok(Some(dh))
    }
}

/// One block's activations, recomputed for its backward pass.
struct Saved {
    /// The block output.
    y: Tensor,
    x: Tensor,
    u: Tensor,
    qa: Tensor,
    ka: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    z: Tensor,
    x1: Tensor,
    c: Tensor,
    cqa: Tensor,
    cq: Tensor,
    cka: Tensor,
    kv: CrossKv,
    cz: Tensor,
    x2: Tensor,
    u2: Tensor,
    h0: Tensor,
    g: Tensor,
}

/// The linear layers of a block, by path under `blocks.N.`: self- and cross-attention q, k, v, o
/// and the two FFN layers.
pub const BLOCK_LINEARS: [&str; 10] = [
    "self_attn.q",
    "self_attn.k",
    "self_attn.v",
    "self_attn.o",
    "cross_attn.q",
    "cross_attn.k",
    "cross_attn.v",
    "cross_attn.o",
    "ffn.0",
    "ffn.2",
];

impl Block {
    /// The linear layer `name` (one of [`BLOCK_LINEARS`]).
    fn linear(&self, name: &str) -> &Linear {
        let (s, c) = (&self.self_attn, &self.cross_attn);
        match name {
            "self_attn.q" => &s.q,
            "self_attn.k" => &s.k,
            "self_attn.v" => &s.v,
            "self_attn.o" => &s.o,
            "cross_attn.q" => &c.q,
            "cross_attn.k" => &c.k,
            "cross_attn.v" => &c.v,
            "cross_attn.o" => &c.o,
            "ffn.0" => &self.ffn0,
            _ => &self.ffn2,
        }
    }

    fn adapted<'a>(&'a self, name: &'static str, ad: &'a BlockAdapters) -> Adapted<'a> {
        Adapted {
            name,
            lin: self.linear(name),
            delta: ad.get(name),
        }
    }

    /// The block's forward pass with adapters, keeping what the backward pass needs.
    fn train_forward(&self, x: &Tensor, cond: &Cond, ad: &BlockAdapters) -> Result<Saved> {
        let Cond { e0, rope, text } = *cond;
        let m = self.modulation(e0)?;
        let hd = self.head_dim();
        let lin = |n| self.adapted(n, ad);
        let (sa, ca) = (&self.self_attn, &self.cross_attn);
        let u = self.modulate(x, &m[0], &m[1])?;
        let qa = lin("self_attn.q").forward(&u)?;
        let ka = lin("self_attn.k").forward(&u)?;
        let q = self.heads(&qa.rms_norm(Some(&sa.norm_q), self.eps)?)?;
        let q = q.rope_interleaved(&rope.cos, &rope.sin)?;
        let k = self.heads(&ka.rms_norm(Some(&sa.norm_k), self.eps)?)?;
        let k = k.rope_interleaved(&rope.cos, &rope.sin)?;
        let v = self.heads(&lin("self_attn.v").forward(&u)?)?;
        let z = Block::merge(&attention(&q, &k, &v, &self.params(hd))?)?;
        let x1 = x.add(&lin("self_attn.o").forward(&z)?.mul(&m[2])?)?;
        let c = x1.layer_norm(Some(&self.norm3_w), Some(&self.norm3_b), self.eps)?;
        let cqa = lin("cross_attn.q").forward(&c)?;
        let cq = self.heads(&cqa.rms_norm(Some(&ca.norm_q), self.eps)?)?;
        let cka = lin("cross_attn.k").forward(text)?;
        let kv = CrossKv {
            k: self.heads(&cka.rms_norm(Some(&ca.norm_k), self.eps)?)?,
            v: self.heads(&lin("cross_attn.v").forward(text)?)?,
        };
        let cz = Block::merge(&attention(&cq, &kv.k, &kv.v, &self.params(hd))?)?;
        let x2 = x1.add(&lin("cross_attn.o").forward(&cz)?)?;
        let u2 = self.modulate(&x2, &m[3], &m[4])?;
        let h0 = lin("ffn.0").forward(&u2)?;
        let g = h0.gelu_tanh()?;
        let y = x2.add(&lin("ffn.2").forward(&g)?.mul(&m[5])?)?;
        Ok(Saved {
            y,
            x: x.clone(),
            u,
            qa,
            ka,
            q,
            k,
            v,
            z,
            x1,
            c,
            cqa,
            cq,
            cka,
            kv,
            cz,
            x2,
            u2,
            h0,
            g,
        })
    }

    /// Channels per head.
    fn head_dim(&self) -> usize {
        self.self_attn.q.w.dims()[0] / self.heads
    }

    /// The gradient at the block's input from the gradient `dy` at its output; the adapters'
    /// gradients go into `grads`.
    fn train_backward(
        &self,
        s: &Saved,
        dy: &Tensor,
        cond: &Cond,
        ad: &BlockAdapters,
        grads: &mut BTreeMap<String, DeltaGrad>,
    ) -> Result<Tensor> {
        let Cond { e0, rope, text } = *cond;
        let i = ad.index;
        let m = self.modulation(e0)?;
        let lin = |n| self.adapted(n, ad);
        let (sa, ca) = (&self.self_attn, &self.cross_attn);
        let scale = 1.0 / (self.head_dim() as f32).sqrt();

        // FFN: y = x2 + ffn2(gelu(ffn0(u2)))·gate2, u2 = LN(x2)·(1 + scale2) + shift2.
        let dg = lin("ffn.2").backward(&s.g, &dy.mul(&m[5])?, i, grads)?;
        let dh0 = s.h0.gelu_tanh_backward(&dg)?;
        let du2 = lin("ffn.0").backward(&s.u2, &dh0, i, grads)?;
        let dn = du2.mul(&m[4].affine(1.0, 1.0)?)?;
        let dx2 = dy.add(&s.x2.layer_norm_backward(&dn, None, self.eps)?)?;

        // Cross-attention: x2 = x1 + o(attn(q(LN3(x1)), k(text), v(text))); the text is frozen.
        let dcz = lin("cross_attn.o").backward(&s.cz, &dx2, i, grads)?;
        let g = attention_backward(&s.cq, &s.kv.k, &s.kv.v, &self.heads(&dcz)?, scale)?;
        let dcka = s
            .cka
            .rms_norm_backward(&Block::merge(&g.dk)?, Some(&ca.norm_k), self.eps)?;
        lin("cross_attn.k").record(text, &dcka, i, grads)?;
        lin("cross_attn.v").record(text, &Block::merge(&g.dv)?, i, grads)?;
        let dcqa = s
            .cqa
            .rms_norm_backward(&Block::merge(&g.dq)?, Some(&ca.norm_q), self.eps)?;
        let dc = lin("cross_attn.q").backward(&s.c, &dcqa, i, grads)?;
        let dx1 = dx2.add(
            &s.x1
                .layer_norm_backward(&dc, Some(&self.norm3_w), self.eps)?,
        )?;

        // Self-attention: x1 = x + o(attn(rope(q(u)), rope(k(u)), v(u)))·gate1.
        let dz = lin("self_attn.o").backward(&s.z, &dx1.mul(&m[2])?, i, grads)?;
        let g = attention_backward(&s.q, &s.k, &s.v, &self.heads(&dz)?, scale)?;
        let unrope = |d: &Tensor| Block::merge(&d.rope_interleaved_backward(&rope.cos, &rope.sin)?);
        let dqa =
            s.qa.rms_norm_backward(&unrope(&g.dq)?, Some(&sa.norm_q), self.eps)?;
        let dka =
            s.ka.rms_norm_backward(&unrope(&g.dk)?, Some(&sa.norm_k), self.eps)?;
        let du = lin("self_attn.q").backward(&s.u, &dqa, i, grads)?;
        let du = du.add(&lin("self_attn.k").backward(&s.u, &dka, i, grads)?)?;
        let du = du.add(&lin("self_attn.v").backward(&s.u, &Block::merge(&g.dv)?, i, grads)?)?;
        let dn1 = du.mul(&m[1].affine(1.0, 1.0)?)?;
        dx1.add(&s.x.layer_norm_backward(&dn1, None, self.eps)?)
    }
}
