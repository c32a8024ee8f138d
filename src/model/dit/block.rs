//! One Wan transformer block (`WanAttentionBlock`, wan-architecture.md §1.6).

pub(super) mod backward;

use super::nag::{nag_combine, NagParams};
use super::rope::RopeTable;
use super::weights::{
    map_weight, update_checked, with_table, Linear, ParamUpdate, Take, TensorMap,
};
use super::{DitConfig, SelfAttention};
use crate::backend::Device;
use crate::error::Result;
use crate::tensor::ops::{attention, cat, AttentionParams};
use crate::tensor::{DType, Tensor, Weight};

/// Tokens whose FFN hidden layer (`ffn_dim` wide, 3.5-6× the stream) exists at once: bounds
/// its memory at long sequences while keeping the GEMMs large.
const FFN_ROWS: usize = 4096;

/// Query/key/value/output projections and the q/k RMSNorms over the full width.
#[derive(Debug, Clone)]
struct Attn {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    norm_q: Weight,
    norm_k: Weight,
}

impl Attn {
    fn load(t: &mut Take, prefix: &str, dim: usize) -> Result<Attn> {
        Ok(Attn {
            q: t.linear(&format!("{prefix}.q"), dim, dim)?,
            k: t.linear(&format!("{prefix}.k"), dim, dim)?,
            v: t.linear(&format!("{prefix}.v"), dim, dim)?,
            o: t.linear(&format!("{prefix}.o"), dim, dim)?,
            norm_q: t.weight(&format!("{prefix}.norm_q.weight"), &[dim])?,
            norm_k: t.weight(&format!("{prefix}.norm_k.weight"), &[dim])?,
        })
    }

    /// The layers' weights and biases and the norms, named under `prefix`, appended to `out`.
    fn params<'a>(&'a mut self, prefix: &str, out: &mut Vec<(String, &'a mut Weight)>) {
        for (name, l) in [
            ("q", &mut self.q),
            ("k", &mut self.k),
            ("v", &mut self.v),
            ("o", &mut self.o),
        ] {
            l.params(&format!("{prefix}.{name}"), out);
        }
        out.push((format!("{prefix}.norm_q.weight"), &mut self.norm_q));
        out.push((format!("{prefix}.norm_k.weight"), &mut self.norm_k));
    }

    fn map_tensors(&self, f: &mut TensorMap<'_>) -> Result<Attn> {
        Ok(Attn {
            q: self.q.map_tensors(f)?,
            k: self.k.map_tensors(f)?,
            v: self.v.map_tensors(f)?,
            o: self.o.map_tensors(f)?,
            norm_q: map_weight(&self.norm_q, f)?,
            norm_k: map_weight(&self.norm_k, f)?,
        })
    }
}

/// The cross-attention keys and values of one block for one text context, `[B, L, heads, head_dim]`
/// each. They depend only on the context, so a sampler can compute them once per prompt.
#[derive(Debug, Clone)]
pub struct CrossKv {
    /// `RMSNorm_k(W_k · ctx + b_k)`, split into heads.
    pub k: Tensor,
    /// `W_v · ctx + b_v`, split into heads.
    pub v: Tensor,
}

/// What a block needs besides the hidden state.
pub(super) struct BlockInputs<'a> {
    /// `e0 = time_projection(e)` as `[B, 6, dim]`.
    pub e0: &'a Tensor,
    pub rope: &'a RopeTable,
    /// This block's cross-attention K/V for the (positive) context.
    pub kv: &'a CrossKv,
    /// NAG: its parameters and this block's K/V for the negative context (batch 1, shared).
    pub nag: Option<(&'a NagParams, &'a CrossKv)>,
    /// How the self-attention is computed.
    pub attention: SelfAttention,
}

/// The parameters of one block.
#[derive(Debug, Clone)]
pub(super) struct Block {
    /// `[1, 6, dim]` f32, added to `e0`: shift1, scale1, gate1, shift2, scale2, gate2.
    modulation: Tensor,
    self_attn: Attn,
    norm3_w: Weight,
    norm3_b: Weight,
    cross_attn: Attn,
    ffn0: Linear,
    ffn2: Linear,
    heads: usize,
    eps: f32,
}

impl Block {
    /// The stored dtype of the feed-forward weights (like every linear layer's).
    pub fn weight_dtype(&self) -> DType {
        self.ffn0.w.dtype()
    }

    pub fn load(t: &mut Take, i: usize, cfg: &DitConfig) -> Result<Block> {
        let (dim, p) = (cfg.dim, format!("blocks.{i}"));
        Ok(Block {
            modulation: t.f32_tensor(&format!("{p}.modulation"), &[1, 6, dim])?,
            self_attn: Attn::load(t, &format!("{p}.self_attn"), dim)?,
            norm3_w: t.weight(&format!("{p}.norm3.weight"), &[dim])?,
            norm3_b: t.weight(&format!("{p}.norm3.bias"), &[dim])?,
            cross_attn: Attn::load(t, &format!("{p}.cross_attn"), dim)?,
            ffn0: t.linear(&format!("{p}.ffn.0"), cfg.ffn_dim, dim)?,
            ffn2: t.linear(&format!("{p}.ffn.2"), dim, cfg.ffn_dim)?,
            heads: cfg.num_heads,
            eps: cfg.eps as f32,
        })
    }

    /// The block on `device`, every parameter in its stored dtype.
    pub fn to_device(&self, device: Device) -> Result<Block> {
        self.map_tensors(&mut |t| t.to_device(device))
    }

    /// The block with every tensor mapped by `f`, always in the same order (the modulation,
    /// then each layer's weights, biases, norms and unmerged deltas), each weight keeping its
    /// scale: what block swapping copies out and puts back.
    pub fn map_tensors(&self, f: &mut TensorMap<'_>) -> Result<Block> {
        Ok(Block {
            modulation: f(&self.modulation)?,
            self_attn: self.self_attn.map_tensors(f)?,
            norm3_w: map_weight(&self.norm3_w, f)?,
            norm3_b: map_weight(&self.norm3_b, f)?,
            cross_attn: self.cross_attn.map_tensors(f)?,
            ffn0: self.ffn0.map_tensors(f)?,
            ffn2: self.ffn2.map_tensors(f)?,
            heads: self.heads,
            eps: self.eps,
        })
    }

    /// Runs `update` on every parameter of the block, named as block `index`'s in a checkpoint
    /// (the modulation as the f32 table the block computes with), checked as
    /// [`update_checked`] says.
    pub fn update(&mut self, index: usize, update: &mut ParamUpdate<'_>) -> Result<()> {
        let p = format!("blocks.{index}");
        with_table(&mut self.modulation, |modulation| {
            let mut params = vec![(format!("{p}.modulation"), modulation)];
            self.self_attn
                .params(&format!("{p}.self_attn"), &mut params);
            params.push((format!("{p}.norm3.weight"), &mut self.norm3_w));
            params.push((format!("{p}.norm3.bias"), &mut self.norm3_b));
            self.cross_attn
                .params(&format!("{p}.cross_attn"), &mut params);
            self.ffn0.params(&format!("{p}.ffn.0"), &mut params);
            self.ffn2.params(&format!("{p}.ffn.2"), &mut params);
            update_checked(&mut params, update)
        })
    }

    /// Whether a layer of the block carries an unmerged low-rank delta.
    pub fn has_deltas(&mut self) -> bool {
        self.linears_mut().iter().any(|(_, l)| l.delta.is_some())
    }

    /// Every linear layer of the block with its path under `blocks.N.`.
    pub fn linears_mut(&mut self) -> [(&'static str, &mut Linear); 10] {
        let (s, c) = (&mut self.self_attn, &mut self.cross_attn);
        [
            ("self_attn.q", &mut s.q),
            ("self_attn.k", &mut s.k),
            ("self_attn.v", &mut s.v),
            ("self_attn.o", &mut s.o),
            ("cross_attn.q", &mut c.q),
            ("cross_attn.k", &mut c.k),
            ("cross_attn.v", &mut c.v),
            ("cross_attn.o", &mut c.o),
            ("ffn.0", &mut self.ffn0),
            ("ffn.2", &mut self.ffn2),
        ]
    }

    /// `(shift1, scale1, gate1, shift2, scale2, gate2)`, each `[B, 1, dim]`.
    fn modulation(&self, e0: &Tensor) -> Result<Vec<Tensor>> {
        e0.add(&self.modulation)?.chunk(6, 1)
    }

    /// `LN(x)·(1 + scale) + shift`, LN without affine.
    fn modulate(&self, x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
        let gain = scale.affine(1.0, 1.0)?;
        if x.dims()[0] == 1 {
            // One sample's modulation is a LayerNorm affine (the same products and sums, so
            // the same bits): one pass over x and one output instead of three.
            let dim = x.dims()[x.dims().len() - 1];
            let (w, b) = (gain.reshape([dim])?, shift.reshape([dim])?);
            return x.layer_norm(Some(&Weight::new(w)), Some(&Weight::new(b)), self.eps);
        }
        x.layer_norm(None, None, self.eps)?.mul(&gain)?.add(shift)
    }

    /// The modulated input of the self-attention, `LN1(x)·(1 + scale1) + shift1` (the
    /// TeaCache indicator of block 0).
    pub fn modulated_input(&self, x: &Tensor, e0: &Tensor) -> Result<Tensor> {
        let m = self.modulation(e0)?;
        self.modulate(x, &m[0], &m[1])
    }

    /// `[B, L, dim] -> [B, L, heads, head_dim]`.
    fn heads(&self, x: &Tensor) -> Result<Tensor> {
        let d = x.dims();
        x.reshape([d[0], d[1], self.heads, d[2] / self.heads])
    }

    /// `[B, L, heads, head_dim] -> [B, L, dim]`.
    fn merge(x: &Tensor) -> Result<Tensor> {
        let d = x.dims();
        x.reshape([d[0], d[1], d[2] * d[3]])
    }

    fn params(&self, head_dim: usize) -> AttentionParams<'static> {
        AttentionParams {
            scale: 1.0 / (head_dim as f32).sqrt(),
            kv_lens: None,
            bias: None,
        }
    }

    /// The cross-attention K/V of an embedded text context `[B, L, dim]`.
    pub fn cross_kv(&self, ctx: &Tensor) -> Result<CrossKv> {
        let a = &self.cross_attn;
        let k = a.k.forward(ctx)?.rms_norm(Some(&a.norm_k), self.eps)?;
        let v = a.v.forward(ctx)?;
        Ok(CrossKv {
            k: self.heads(&k)?,
            v: self.heads(&v)?,
        })
    }

    /// The block: `x [B, S, dim] -> [B, S, dim]`.
    pub fn forward(&self, x: &Tensor, inp: &BlockInputs) -> Result<Tensor> {
        let m = self.modulation(inp.e0)?;
        let x = x.add(
            &self
                .self_attention(&self.modulate(x, &m[0], &m[1])?, inp)?
                .mul(&m[2])?,
        )?;
        let x = x.add(&self.cross_attention(&x, inp)?)?;
        let y = self.ffn(&self.modulate(&x, &m[3], &m[4])?, FFN_ROWS)?;
        x.add(&y.mul(&m[5])?)
    }

    /// `W2·gelu_tanh(W1·u + b1) + b2`, over chunks of `chunk` tokens.
    fn ffn(&self, u: &Tensor, chunk: usize) -> Result<Tensor> {
        let dims = u.dims().to_vec();
        let rows = dims[..dims.len() - 1].iter().product::<usize>();
        let flat = u.reshape([rows, dims[dims.len() - 1]])?;
        let run = |x: &Tensor| self.ffn2.forward(&self.ffn0.forward(x)?.gelu_tanh()?);
        if rows <= chunk {
            return run(&flat)?.reshape(dims.as_slice());
        }
        let parts = (0..rows)
            .step_by(chunk)
            .map(|r| run(&flat.narrow(0, r, chunk.min(rows - r))?))
            .collect::<Result<Vec<_>>>()?;
        cat(&parts.iter().collect::<Vec<_>>(), 0)?.reshape(dims.as_slice())
    }

    /// Self-attention with q/k RMSNorm over the full width, then RoPE; every token is a key.
    fn self_attention(&self, u: &Tensor, inp: &BlockInputs) -> Result<Tensor> {
        let rope = inp.rope;
        let a = &self.self_attn;
        let q = self.heads(&a.q.forward(u)?.rms_norm(Some(&a.norm_q), self.eps)?)?;
        let k = self.heads(&a.k.forward(u)?.rms_norm(Some(&a.norm_k), self.eps)?)?;
        let v = self.heads(&a.v.forward(u)?)?;
        let q = q.rope_interleaved(&rope.cos, &rope.sin)?;
        let k = k.rope_interleaved(&rope.cos, &rope.sin)?;
        let scale = self.params(q.dims()[3]).scale;
        let y = inp.attention.apply(&q, &k, &v, scale)?;
        a.o.forward(&Self::merge(&y)?)
    }

    /// Cross-attention on `LN3(x)` (affine) over every text slot, unmasked and ungated; with NAG,
    /// the guided samples' attention output is mixed with the negative context's before `o`.
    fn cross_attention(&self, x: &Tensor, inp: &BlockInputs) -> Result<Tensor> {
        let a = &self.cross_attn;
        let c = x.layer_norm(Some(&self.norm3_w), Some(&self.norm3_b), self.eps)?;
        let q = self.heads(&a.q.forward(&c)?.rms_norm(Some(&a.norm_q), self.eps)?)?;
        let p = self.params(q.dims()[3]);
        let mut z = Self::merge(&attention(&q, &inp.kv.k, &inp.kv.v, &p)?)?;
        if let Some((nag, neg)) = inp.nag {
            let mut rows = Vec::with_capacity(z.dims()[0]);
            for b in 0..z.dims()[0] {
                let zp = z.narrow(0, b, 1)?;
                rows.push(if nag.guides(b) {
                    let zn = Self::merge(&attention(&q.narrow(0, b, 1)?, &neg.k, &neg.v, &p)?)?;
                    nag_combine(&zp, &zn, nag)?
                } else {
                    zp
                });
            }
            z = cat(&rows.iter().collect::<Vec<_>>(), 0)?;
        }
        a.o.forward(&z)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::io::config::ModelType;

    #[test]
    fn chunked_ffn_matches_one_pass() {
        let cfg = DitConfig {
            model_type: ModelType::T2v,
            dim: 8,
            ffn_dim: 24,
            num_heads: 1,
            num_layers: 1,
            in_dim: 16,
            out_dim: 16,
            text_dim: 8,
            freq_dim: 8,
            text_len: 4,
            eps: 1e-6,
            patch_size: [1, 2, 2],
        };
        let mut map = BTreeMap::new();
        let mut seed = 1u32;
        let mut rand = |dims: &[usize]| {
            let n = dims.iter().product();
            let v = (0..n)
                .map(|_| {
                    seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
                    (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
                })
                .collect();
            Weight::new(Tensor::from_f32(v, dims).unwrap())
        };
        for (name, dims) in [("ffn.0", [24, 8]), ("ffn.2", [8, 24])] {
            map.insert(format!("blocks.0.{name}.weight"), rand(&dims));
            map.insert(format!("blocks.0.{name}.bias"), rand(&dims[..1]));
        }
        for a in ["self_attn", "cross_attn"] {
            for m in ["q", "k", "v", "o"] {
                map.insert(format!("blocks.0.{a}.{m}.weight"), rand(&[8, 8]));
                map.insert(format!("blocks.0.{a}.{m}.bias"), rand(&[8]));
            }
            for n in ["norm_q", "norm_k"] {
                map.insert(format!("blocks.0.{a}.{n}.weight"), rand(&[8]));
            }
        }
        map.insert("blocks.0.norm3.weight".into(), rand(&[8]));
        map.insert("blocks.0.norm3.bias".into(), rand(&[8]));
        map.insert("blocks.0.modulation".into(), rand(&[1, 6, 8]));
        let block = Block::load(&mut Take::new(map), 0, &cfg).unwrap();
        let u = rand(&[2, 11, 8]).tensor;
        let whole = block.ffn(&u, usize::MAX).unwrap().to_f32_vec().unwrap();
        let chunked = block.ffn(&u, 4).unwrap();
        assert_eq!(chunked.dims(), [2, 11, 8]);
        for (a, b) in whole.iter().zip(chunked.to_f32_vec().unwrap()) {
            assert!((a - b).abs() < 1e-6);
        }
    }
}
