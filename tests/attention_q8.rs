//! The 8-bit attention scheme (`wanrt::backend::cpu::attention_q8`) against exact f64 attention,
//! on inputs shaped like Wan's (q and k after RMSNorm and RoPE from the `tiny-dit-hd128` fixture
//! model and from random weights of the 1.3B and 14B configs) and adversarial ones (outlier
//! channels in K, near one-hot softmax rows, long sequences), each held to its path's bounds
//! ([`bounds`]).
//!
//! The fast tests use a few hundred tokens. The error table of docs/PERF.md comes from the
//! ignored test, with the crate optimised (docs/PERF.md gives its time):
//!
//! ```sh
//! CARGO_PROFILE_DEV_OPT_LEVEL=3 cargo test --test attention_q8 -- --include-ignored --nocapture error_table
//! ```

use std::collections::BTreeMap;
use std::time::Instant;

use rayon::prelude::*;
use wanrt::backend::cpu::attention::AttnDims;
use wanrt::backend::cpu::attention_q8::{attention_q8, Q8Path, Q8Scheme};
use wanrt::model::dit::{ForwardOptions, RopeTable, TeaCacheSignal, WanDit, CUDA_Q8_PATH};
use wanrt::tensor::{random, Weight};
use wanrt::{DType, Error, Tensor};

mod common;
use common::model;

/// The largest relative L2 error and the smallest cosine similarity a path must reach on every
/// input here, with margin over what docs/PERF.md measured. fp16 P·V (sm_80's scheme, the one
/// the kernel runs) is limited by the INT8 logits (8.4e-3 to 8.9e-3 on random-weight 1.3B/14B
/// inputs at per-token scales, 1.2e-2 at the per-warp scales this bound was first set for), and
/// so is sm_90's (the same arithmetic with a key tile of 128); the e4m3 P·V scheme of sm_89,
/// which no kernel runs, by V's 3-bit mantissa (2.65e-2 on one-hot rows, where the output is one
/// value of V).
fn bounds(path: Q8Path) -> (f64, f64) {
    match path {
        Q8Path::Sm80 | Q8Path::Sm90 => (2e-2, 0.9998),
        Q8Path::Sm89 => (4.5e-2, 0.999),
    }
}

/// One self-attention call: q, k, v `[1, tokens, heads, head_dim]`.
struct Input {
    name: String,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    dims: AttnDims,
}

impl Input {
    fn new(name: &str, q: &Tensor, k: &Tensor, v: &Tensor) -> Input {
        let d = q.dims();
        Input {
            name: name.into(),
            q: q.to_f32_vec().unwrap(),
            k: k.to_f32_vec().unwrap(),
            v: v.to_f32_vec().unwrap(),
            dims: AttnDims {
                batch: d[0],
                q_len: d[1],
                kv_len: d[1],
                heads: d[2],
                head_dim: d[3],
            },
        }
    }

    fn scale(&self) -> f32 {
        1.0 / (self.dims.head_dim as f32).sqrt()
    }

    /// Exact `softmax(scale · q kᵀ) v` in f64, one (token, head) row at a time.
    fn exact(&self) -> Vec<f64> {
        let AttnDims {
            q_len,
            kv_len,
            heads,
            head_dim: d,
            ..
        } = self.dims;
        let scale = self.scale() as f64;
        let mut out = vec![0f64; q_len * heads * d];
        out.par_chunks_mut(d).enumerate().for_each(|(row, o)| {
            let (i, h) = (row / heads, row % heads);
            let qi = &self.q[(i * heads + h) * d..][..d];
            let logits: Vec<f64> = (0..kv_len)
                .map(|j| {
                    let kj = &self.k[(j * heads + h) * d..][..d];
                    scale
                        * qi.iter()
                            .zip(kj)
                            .map(|(&a, &b)| a as f64 * b as f64)
                            .sum::<f64>()
                })
                .collect();
            let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let p: Vec<f64> = logits.iter().map(|x| (x - max).exp()).collect();
            let sum: f64 = p.iter().sum();
            for (j, pj) in p.iter().enumerate() {
                let vj = &self.v[(j * heads + h) * d..][..d];
                o.iter_mut()
                    .zip(vj)
                    .for_each(|(o, &x)| *o += pj / sum * x as f64);
            }
        });
        out
    }

    /// The scheme's output.
    fn q8(&self, scheme: &Q8Scheme) -> Vec<f32> {
        let mut out = vec![f32::NAN; self.q.len()];
        attention_q8(
            &self.q,
            &self.k,
            &self.v,
            self.dims,
            self.scale(),
            scheme,
            &mut out,
        )
        .unwrap();
        out
    }
}

/// Relative L2 error and cosine similarity of `out` against `want`.
fn errors(out: &[f32], want: &[f64]) -> (f64, f64) {
    let (mut diff, mut oo, mut ww, mut ow) = (0.0, 0.0, 0.0, 0.0);
    for (&o, &w) in out.iter().zip(want) {
        let o = o as f64;
        diff += (o - w) * (o - w);
        oo += o * o;
        ww += w * w;
        ow += o * w;
    }
    ((diff / ww).sqrt(), ow / (oo * ww).sqrt())
}

/// q, k, v of block `block`'s self-attention on its modulated input `x [1, S, dim]`: the
/// projections, RMSNorm over the full width and RoPE, as the DiT computes them.
fn self_attn_qkv(
    w: &BTreeMap<String, Weight>,
    block: usize,
    x: &Tensor,
    heads: usize,
    grid: [usize; 3],
) -> [Tensor; 3] {
    let dim = x.dims()[2];
    let s = grid.iter().product::<usize>();
    let rope = RopeTable::new(grid, dim / heads).unwrap();
    let get = |n: &str| &w[&format!("blocks.{block}.self_attn.{n}")];
    let proj = |n: &str| {
        x.linear(get(&format!("{n}.weight")), Some(get(&format!("{n}.bias"))))
            .unwrap()
    };
    let split = |t: Tensor| t.reshape([1, s, heads, dim / heads]).unwrap();
    let qk = |n: &str| {
        let t = proj(n)
            .rms_norm(Some(get(&format!("norm_{n}.weight"))), 1e-6)
            .unwrap();
        split(t).rope_interleaved(&rope.cos, &rope.sin).unwrap()
    };
    [qk("q"), qk("k"), split(proj("v"))]
}

/// Block 0 of the `tiny-dit-hd128` fixture model (dim 256, 2 heads of 128) on the modulated
/// input the model computes from a random latent of `grid` tokens.
fn fixture_block(grid: [usize; 3]) -> Input {
    let dir = model("tiny-dit-hd128");
    let path = dir.join("dit_f32.safetensors");
    let config = dir.join("config.json");
    let dit = WanDit::open(&path, Some(&config)).unwrap();
    let (w, cfg) = WanDit::read_weights(&path, Some(&config)).unwrap();
    let [t, h, wd] = grid;
    let latent = random::tensor(&[1, cfg.in_dim, t, 2 * h, 2 * wd], 11, 0.0, 1.0).unwrap();
    let ctx = random::tensor(&[7, cfg.text_dim], 12, 0.0, 1.0).unwrap();
    let text = dit.encode_text(&[ctx], false).unwrap();
    let opts = ForwardOptions {
        signal: Some(TeaCacheSignal::Block0Input),
        ..Default::default()
    };
    let x = dit
        .forward_with(&latent, &[700.0], &text, &opts)
        .unwrap()
        .signal
        .unwrap();
    let [q, k, v] = self_attn_qkv(&w, 0, &x, cfg.num_heads, grid);
    let s = grid.iter().product::<usize>();
    Input::new(&format!("tiny-dit-hd128 block 0, {s} tokens"), &q, &k, &v)
}

/// Random weights of one self-attention of a config of width `dim` (as `wanrt bench`: matrices
/// uniform with unit gain, biases small, norm gains near 1) on a unit-variance input; the first
/// `keep` heads.
fn random_block(
    name: &str,
    dim: usize,
    heads: usize,
    grid: [usize; 3],
    keep: usize,
    seed: u32,
) -> Input {
    let s = grid.iter().product::<usize>();
    let amp = (3.0 / dim as f32).sqrt();
    let mut w = BTreeMap::new();
    for (i, n) in ["q", "k", "v"].iter().enumerate() {
        let seed = seed + 10 * i as u32;
        let mut put = |key: String, dims: &[usize], c: f32, a: f32, sd: u32| {
            let t = random::weight(dims, DType::BF16, sd, c, a).unwrap();
            w.insert(format!("blocks.0.self_attn.{key}"), t);
        };
        put(format!("{n}.weight"), &[dim, dim], 0.0, amp, seed);
        put(format!("{n}.bias"), &[dim], 0.0, 0.02, seed + 1);
        put(format!("norm_{n}.weight"), &[dim], 1.0, 0.1, seed + 2);
    }
    let x = random::tensor(&[1, s, dim], seed + 100, 0.0, 3f32.sqrt()).unwrap();
    let [q, k, v] = self_attn_qkv(&w, 0, &x, heads, grid).map(|t| t.narrow(2, 0, keep).unwrap());
    Input::new(
        &format!("{name}, {s} tokens, {keep} of {heads} heads"),
        &q,
        &k,
        &v,
    )
}

/// Channels of K made outliers: shifted by 24 (a per-channel offset, which the K smoothing
/// removes: the outliers SageAttention describes) and their spread around it multiplied by
/// `spread` (which the smoothing cannot remove, and which coarsens the INT8 steps of every other
/// channel of the token by that factor).
fn outlier_k(mut inp: Input, spread: f32) -> Input {
    let d = inp.dims.head_dim;
    for (i, x) in inp.k.iter_mut().enumerate() {
        if [3, 40, 77, 120].contains(&(i % d)) {
            *x = *x * spread + 24.0;
        }
    }
    inp.name = format!("{} + K outlier channels (+24, x{spread})", inp.name);
    inp
}

/// Each query a multiple of its own token's key: every softmax row is nearly one-hot.
fn one_hot_rows(mut inp: Input) -> Input {
    inp.q = inp.k.iter().map(|&x| 3.0 * x).collect();
    inp.name = format!("{} with q = 3k (near one-hot rows)", inp.name);
    inp
}

fn check_bounds(inp: &Input, paths: &[Q8Path]) {
    let want = inp.exact();
    for &path in paths {
        let (rel, cos) = errors(&inp.q8(&Q8Scheme::for_path(path)), &want);
        println!(
            "{} {}: rel_l2 {rel:.3e} cos {cos:.6}",
            inp.name,
            path.name()
        );
        let (max_rel, min_cos) = bounds(path);
        assert!(
            rel <= max_rel && cos >= min_cos,
            "{} on {}: rel_l2 {rel:.3e}, cosine {cos:.6}",
            inp.name,
            path.name()
        );
        // The emulation really quantizes.
        assert!(
            rel > 1e-5,
            "{} on {}: rel_l2 {rel:e}",
            inp.name,
            path.name()
        );
    }
}

#[test]
fn fixture_model_within_bounds() {
    check_bounds(&fixture_block([2, 10, 12]), &Q8Path::ALL);
}

/// The schemes the kernels run (sm_80's mma.sync, sm_90's wgmma) within the issue's bounds
/// (relative L2 ≤ 1e-2, cosine ≥ 0.9995) on Wan-shaped inputs: the fixture model's attention
/// and random 1.3B weights, a few hundred tokens; and close to each other: their arithmetic
/// differs only in the key tile (64 and 128 keys), which moves the running maximum P is taken
/// against and so P's f16 rounding (half an ulp: 4.9e-4 relative per weight, averaging down
/// over the keys; 2.9e-5 measured on the fixture input).
#[test]
fn kernel_schemes_within_the_issue_bounds() {
    let inputs = [
        fixture_block([2, 10, 12]),
        random_block("1.3B random", 1536, 12, [2, 10, 16], 2, 100),
    ];
    for inp in &inputs {
        let want = inp.exact();
        let out = [Q8Path::Sm80, Q8Path::Sm90].map(|p| inp.q8(&Q8Scheme::for_path(p)));
        for (path, o) in [Q8Path::Sm80, Q8Path::Sm90].iter().zip(&out) {
            let (rel, cos) = errors(o, &want);
            println!(
                "{} {}: rel_l2 {rel:.3e} cos {cos:.6}",
                inp.name,
                path.name()
            );
            assert!(
                rel <= 1e-2 && cos >= 0.9995,
                "{} {path:?}: {rel:e} {cos}",
                inp.name
            );
        }
        let between = errors(
            &out[1],
            &out[0].iter().map(|&x| x as f64).collect::<Vec<_>>(),
        );
        println!("{} sm90 vs sm80: rel_l2 {:.3e}", inp.name, between.0);
        assert!(between.0 <= 2e-4, "{}: sm90 vs sm80 {between:?}", inp.name);
    }
}

#[test]
fn adversarial_inputs_within_bounds() {
    let base = || random_block("dim 512", 512, 4, [2, 10, 12], 2, 7);
    check_bounds(&outlier_k(base(), 2.0), &Q8Path::ALL);
    check_bounds(&one_hot_rows(base()), &Q8Path::ALL);
}

#[test]
fn one_key_returns_its_value() {
    // One key: every row's output is that key's value through V's format. These values are on
    // the f16 and e4m3 grids (after V's per-channel scaling), so only the f32 rounding of the
    // final scalings remains.
    let dims = AttnDims {
        batch: 1,
        q_len: 5,
        kv_len: 1,
        heads: 1,
        head_dim: 4,
    };
    let (q, k) = (random::values(20, 1), random::values(4, 2));
    let v = [448.0f32, -0.5, 3.0, 0.0];
    for path in Q8Path::ALL {
        let mut out = vec![f32::NAN; 20];
        attention_q8(&q, &k, &v, dims, 0.5, &Q8Scheme::for_path(path), &mut out).unwrap();
        for row in out.chunks(4) {
            for (&g, &w) in row.iter().zip(&v) {
                assert!((g - w).abs() <= 1e-6 * w.abs(), "{path:?}: {row:?}");
            }
        }
    }
}

#[test]
fn bad_input_is_an_error() {
    let dims = AttnDims {
        batch: 1,
        q_len: 3,
        kv_len: 2,
        heads: 1,
        head_dim: 4,
    };
    let s = Q8Scheme::for_path(Q8Path::Sm89);
    let (q, k) = (random::values(12, 1), random::values(8, 2));
    let mut out = vec![0.0; 12];
    let invalid = |r: wanrt::Result<()>| matches!(r, Err(Error::InvalidArgument(_)));
    assert!(invalid(attention_q8(
        &q,
        &k,
        &k,
        dims,
        0.5,
        &s,
        &mut out[..11]
    )));
    let mut nan = k.clone();
    nan[5] = f32::NAN;
    assert!(invalid(attention_q8(&q, &k, &nan, dims, 0.5, &s, &mut out)));
    assert!(invalid(attention_q8(
        &q,
        &k,
        &k,
        dims,
        f32::INFINITY,
        &s,
        &mut out
    )));
    let zero = Q8Scheme { mma_k: 0, ..s };
    assert!(invalid(attention_q8(
        &q, &k, &k, dims, 0.5, &zero, &mut out
    )));
    // No keys: zeros.
    let none = AttnDims { kv_len: 0, ..dims };
    out.fill(1.0);
    attention_q8(&q, &[], &[], none, 0.5, &s, &mut out).unwrap();
    assert!(out.iter().all(|&x| x == 0.0));
}

/// The error table of docs/PERF.md: the chosen scheme (the CUDA kernel's, [`CUDA_Q8_PATH`]) on
/// every input class, one row each, with the seconds each row took. The alternatives measured
/// while choosing it (coarser scales, channel balancing, e4m3 P·V) are in docs/PERF.md's earlier
/// q8 tables; `Q8Scheme::with_granularity` and `Q8Path::Sm89` rebuild them.
#[test]
#[ignore = "minutes; prints the table of docs/PERF.md"]
fn error_table() {
    let scheme = Q8Scheme::for_path(CUDA_Q8_PATH);
    println!("| input | rel. L2 | cosine | seconds |");
    println!("|---|---:|---:|---:|");
    let b13 = |heads| random_block("1.3B random", 1536, 12, [4, 16, 32], heads, 100);
    let inputs: Vec<Box<dyn Fn() -> Input>> = vec![
        Box::new(|| fixture_block([4, 24, 32])),
        Box::new(move || b13(4)),
        Box::new(|| random_block("14B random", 5120, 40, [4, 16, 32], 4, 200)),
        Box::new(move || outlier_k(b13(4), 2.0)),
        Box::new(move || outlier_k(b13(4), 8.0)),
        Box::new(move || one_hot_rows(b13(4))),
        Box::new(|| random_block("1.3B random", 1536, 12, [8, 32, 32], 1, 300)),
    ];
    let mut worst = (0f64, 1f64);
    for make in inputs {
        let start = Instant::now();
        let inp = make();
        let (rel, cos) = errors(&inp.q8(&scheme), &inp.exact());
        worst = (worst.0.max(rel), worst.1.min(cos));
        let secs = start.elapsed().as_secs_f64();
        println!("| {} | {rel:.2e} | {cos:.6} | {secs:.0} |", inp.name);
    }
    println!("worst: rel_l2 {:.3e}, cosine {:.6}", worst.0, worst.1);
}
