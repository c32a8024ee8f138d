//! GPU tests of every kernel against a CPU reference (the CPU backend where it has the op), on
//! random inputs of many shapes (odd sizes and unaligned views included), with fresh inputs per
//! case and outputs poisoned with NaN before each launch so an unwritten value cannot pass. They
//! print a skip reason and pass when no CUDA device can be used.

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaSlice, CudaStream};
use half::bf16;

use super::attention::ATTENTION_BLOCK_M;
use super::convert::Fp8Format;
use super::patchify::PatchDims;
use super::qk_norm_rope::RopeTables;
use super::Kernels;
use crate::backend::attention_emulation::flash_attention_bf16;
use crate::backend::cpu;
use crate::backend::cpu::attention::{AttnDims, AttnOpts};
use crate::model::dit::embed::sinusoid;
use crate::model::dit::rope::RopeTable;
use crate::tensor::{fp8, random};

/// A device, its stream and the loaded kernels; `None` (with the reason printed) without one.
pub(super) fn gpu(test: &str) -> Option<(Arc<CudaStream>, Kernels)> {
    // SAFETY: only tries to dlopen the driver library.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        println!("{test}: SKIP: libcuda could not be loaded (no NVIDIA driver)");
        return None;
    }
    // cudarc panics on some driver failures: contain them.
    let ctx = match std::panic::catch_unwind(|| CudaContext::new(0)) {
        Ok(Ok(ctx)) => ctx,
        Ok(Err(e)) => {
            println!("{test}: SKIP: no usable CUDA device: {e}");
            return None;
        }
        Err(_) => {
            println!("{test}: SKIP: the CUDA driver could not be initialised");
            return None;
        }
    };
    let kernels = Kernels::load(&ctx).expect("the embedded kernels load on this device");
    Some((ctx.default_stream(), kernels))
}

pub(super) fn upload<T: cudarc::driver::DeviceRepr>(
    stream: &Arc<CudaStream>,
    host: &[T],
) -> CudaSlice<T> {
    stream.clone_htod(host).expect("upload")
}

pub(super) fn download<T: cudarc::driver::DeviceRepr + Default + Clone>(
    stream: &Arc<CudaStream>,
    dev: &CudaSlice<T>,
) -> Vec<T> {
    stream.clone_dtoh(dev).expect("download")
}

/// An output buffer of `n` NaNs.
pub(super) fn poisoned_bf16(stream: &Arc<CudaStream>, n: usize) -> CudaSlice<bf16> {
    upload(stream, &vec![bf16::NAN; n])
}

fn poisoned_f32(stream: &Arc<CudaStream>, n: usize) -> CudaSlice<f32> {
    upload(stream, &vec![f32::NAN; n])
}

/// Random values `center ± amp` (uniform), distinct per seed.
pub(super) fn values(n: usize, seed: u32, center: f32, amp: f32) -> Vec<f32> {
    random::values(n, seed)
        .into_iter()
        .map(|u| center + amp * u)
        .collect()
}

pub(super) fn bf16s(x: &[f32]) -> Vec<bf16> {
    x.iter().map(|&v| bf16::from_f32(v)).collect()
}

pub(super) fn widen(x: &[bf16]) -> Vec<f32> {
    x.iter().map(|v| v.to_f32()).collect()
}

/// Asserts `|got − want| ≤ rel·|want| + abs` everywhere (NaN in `got` fails).
pub(super) fn assert_close(what: &str, got: &[f32], want: &[f32], rel: f32, abs: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let ok = (g - w).abs() <= rel * w.abs() + abs;
        assert!(ok, "{what}: element {i}: got {g}, want {w}");
    }
}

/// One bf16 step relative (2^-8: the rounding of the kernel plus that of the reference).
pub(super) const BF16_REL: f32 = 1.0 / 256.0;

/// Relative L2 distance of `got` from `want` (the plain L2 norm of `got` when `want` is zero).
pub(super) fn rel_l2(got: &[f32], want: &[f32]) -> f64 {
    let num: f64 = got
        .iter()
        .zip(want)
        .map(|(g, w)| ((g - w) as f64).powi(2))
        .sum();
    let den: f64 = want.iter().map(|w| (*w as f64).powi(2)).sum();
    if den > 0.0 {
        (num / den).sqrt()
    } else {
        num.sqrt()
    }
}

/// Attention inputs q, k, v of `dims` (bf16): uniform values (q and k in ±3, v in ±1), or with
/// `wan` q and k of unit RMS with a few K channels offset by 8 (what the K smoothing removes)
/// and V with a mean of 0.5 (what the V smoothing removes), as the DiT's self-attention after
/// RMSNorm and RoPE.
pub(super) fn attention_inputs(dims: AttnDims, seed: u32, wan: bool) -> [Vec<bf16>; 3] {
    let AttnDims {
        batch,
        q_len,
        kv_len,
        heads,
        head_dim: d,
    } = dims;
    let nq = batch * q_len * heads * d;
    let nk = batch * kv_len * heads * d;
    let amp = if wan { 3f32.sqrt() } else { 3.0 };
    let q = values(nq, seed, 0.0, amp);
    let mut k = values(nk, seed + 1, 0.0, amp);
    let mut v = values(nk, seed + 2, 0.0, 1.0);
    if wan {
        for (i, x) in k.iter_mut().enumerate() {
            if i % d % 37 == 5 {
                *x += 8.0;
            }
        }
        v.iter_mut().for_each(|x| *x += 0.5);
    }
    [bf16s(&q), bf16s(&k), bf16s(&v)]
}

#[test]
fn gpu_layer_norm_modulate_and_affine() {
    let Some((stream, k)) = gpu("gpu_layer_norm_modulate_and_affine") else {
        return;
    };
    for (seed, &(rows, cols)) in [(1, 1), (3, 7), (17, 64), (5, 1536), (33, 1000), (2, 5120)]
        .iter()
        .enumerate()
    {
        let seed = seed as u32 * 8;
        // A large mean checks the two-pass variance.
        let x = bf16s(&values(rows * cols, seed, 3.0, 2.0));
        let shift = values(cols, seed + 1, 0.0, 0.5);
        let scale = values(cols, seed + 2, 0.0, 0.5);
        let (dx, dshift, dscale) = (
            upload(&stream, &x),
            upload(&stream, &shift),
            upload(&stream, &scale),
        );
        for modulate in [true, false] {
            let mut out = poisoned_bf16(&stream, rows * cols);
            let run = if modulate {
                Kernels::layer_norm_modulate
            } else {
                Kernels::layer_norm_affine
            };
            let (a, b) = if modulate {
                (&dshift, &dscale)
            } else {
                (&dscale, &dshift)
            };
            run(
                &k,
                &stream,
                &dx.as_view(),
                &a.as_view(),
                &b.as_view(),
                &mut out.as_view_mut(),
                rows,
                cols,
                1e-6,
            )
            .unwrap();
            let got = widen(&download(&stream, &out));
            let weight: Vec<f32> = if modulate {
                scale.iter().map(|s| 1.0 + s).collect()
            } else {
                shift.clone()
            };
            let bias = if modulate { &shift } else { &scale };
            let mut want = vec![0f32; rows * cols];
            cpu::norm::layer_norm(&widen(&x), &mut want, cols, Some(&weight), Some(bias), 1e-6);
            assert_close(
                &format!("layer_norm {rows}x{cols} modulate={modulate}"),
                &got,
                &want,
                BF16_REL,
                1e-4,
            );
        }
    }
}

#[test]
fn gpu_rms_norm_rope() {
    let Some((stream, k)) = gpu("gpu_rms_norm_rope") else {
        return;
    };
    // (grid, heads, head_dim): odd grids, the DiT's head dims, a head dim not a multiple of 8.
    for (seed, &(grid, heads, head_dim)) in [
        ([1, 1, 1], 1, 16),
        ([2, 3, 5], 2, 128),
        ([3, 4, 4], 12, 128),
        ([1, 3, 7], 3, 64),
        ([2, 2, 3], 2, 22),
    ]
    .iter()
    .enumerate()
    {
        let seed = seed as u32 * 8;
        let tokens = grid.iter().product::<usize>();
        let dim = heads * head_dim;
        let x = bf16s(&values(tokens * dim, seed, 0.2, 3.0));
        let weight = values(dim, seed + 1, 1.0, 0.5);
        let table = RopeTable::new(grid, head_dim).unwrap();
        let (cos, sin) = (table.cos.f32_data().unwrap(), table.sin.f32_data().unwrap());
        let (dx, dw) = (upload(&stream, &x), upload(&stream, &weight));
        let (dcos, dsin) = (upload(&stream, cos), upload(&stream, sin));
        // Reference: the norm rounded to bf16 as upstream, times the weight, then RoPE.
        let mut normed = vec![0f32; tokens * dim];
        cpu::norm::rms_norm(&widen(&x), &mut normed, dim, None, 1e-6);
        let weighted: Vec<f32> = normed
            .iter()
            .enumerate()
            .map(|(i, &n)| bf16::from_f32(n).to_f32() * weight[i % dim])
            .collect();
        let mut rotated = vec![0f32; tokens * dim];
        cpu::rope::rope_interleaved(&weighted, &mut rotated, tokens, heads, head_dim, cos, sin);
        for rope in [true, false] {
            let mut out = poisoned_bf16(&stream, tokens * dim);
            let (vc, vs) = (dcos.as_view(), dsin.as_view());
            let tables = rope.then_some(RopeTables { cos: &vc, sin: &vs });
            k.rms_norm_rope(
                &stream,
                &dx.as_view(),
                &dw.as_view(),
                tables,
                &mut out.as_view_mut(),
                tokens,
                heads,
                head_dim,
                1e-6,
            )
            .unwrap();
            let got = widen(&download(&stream, &out));
            let want = if rope { &rotated } else { &weighted };
            assert_close(
                &format!("rms_norm_rope {grid:?} {heads}x{head_dim} rope={rope}"),
                &got,
                want,
                BF16_REL,
                1e-4,
            );
        }
    }
}

#[test]
fn gpu_gated_residual_add_and_gelu() {
    let Some((stream, k)) = gpu("gpu_gated_residual_add_and_gelu") else {
        return;
    };
    for (seed, &(rows, cols)) in [(1, 1), (3, 5), (7, 8), (9, 1536), (4, 1001)]
        .iter()
        .enumerate()
    {
        let seed = seed as u32 * 8;
        let n = rows * cols;
        let x = bf16s(&values(n, seed, 0.0, 4.0));
        let y = bf16s(&values(n, seed + 1, 0.0, 4.0));
        let gate = values(cols, seed + 2, 0.0, 1.0);
        let mut dx = upload(&stream, &x);
        let (dy, dg) = (upload(&stream, &y), upload(&stream, &gate));
        k.gated_residual_add(
            &stream,
            &mut dx.as_view_mut(),
            &dy.as_view(),
            &dg.as_view(),
            rows,
            cols,
        )
        .unwrap();
        let want: Vec<f32> = (0..n)
            .map(|i| x[i].to_f32() + y[i].to_f32() * gate[i % cols])
            .collect();
        assert_close(
            &format!("gated_residual_add {rows}x{cols}"),
            &widen(&download(&stream, &dx)),
            &want,
            BF16_REL,
            1e-6,
        );

        // GELU on the whole buffer and on a view one element in (the unaligned path).
        for skip in [0, 1.min(n - 1)] {
            let m = n - skip;
            let mut out = poisoned_bf16(&stream, m);
            k.gelu_tanh(&stream, &dy.slice(skip..), &mut out.as_view_mut(), m)
                .unwrap();
            let want: Vec<f32> = y[skip..]
                .iter()
                .map(|v| cpu::elementwise::gelu_tanh(v.to_f32()))
                .collect();
            assert_close(
                &format!("gelu_tanh n={m}"),
                &widen(&download(&stream, &out)),
                &want,
                BF16_REL,
                1e-6,
            );
        }
    }
}

#[test]
fn gpu_sinusoidal_embedding() {
    let Some((stream, k)) = gpu("gpu_sinusoidal_embedding") else {
        return;
    };
    for (t, dim) in [
        (0.0, 256),
        (999.0, 256),
        (437.0, 256),
        (1.0, 2),
        (250.0, 18),
    ] {
        let mut out = poisoned_f32(&stream, dim);
        k.sinusoidal_embedding(&stream, t, &mut out.as_view_mut(), dim)
            .unwrap();
        let want = sinusoid(&[t as f32], dim).unwrap();
        assert_close(
            &format!("sinusoid t={t} dim={dim}"),
            &download(&stream, &out),
            want.f32_data().unwrap(),
            0.0,
            1e-6,
        );
    }
}

#[test]
fn gpu_patchify_roundtrip() {
    let Some((stream, k)) = gpu("gpu_patchify_roundtrip") else {
        return;
    };
    for (seed, &(channels, frames, height, width)) in [
        (1, 1, 2, 2),
        (16, 3, 6, 10),
        (5, 2, 4, 14),
        (16, 1, 60, 104),
    ]
    .iter()
    .enumerate()
    {
        let dims = PatchDims {
            channels,
            frames,
            height,
            width,
            patch: [2, 2],
        };
        let n = channels * frames * height * width;
        let latent = values(n, seed as u32, 0.0, 3.0);
        let dl = upload(&stream, &latent);
        let mut tokens = poisoned_bf16(&stream, n);
        k.patchify(&stream, &dl.as_view(), &mut tokens.as_view_mut(), dims)
            .unwrap();
        let got = download(&stream, &tokens);
        let (hp, wp, feats) = (height / 2, width / 2, channels * 4);
        let at = |c: usize, f: usize, y: usize, x: usize| {
            latent[((c * frames + f) * height + y) * width + x]
        };
        for (i, g) in got.iter().enumerate() {
            let (tok, feat) = (i / feats, i % feats);
            let (c, kh, kw) = (feat / 4, feat / 2 % 2, feat % 2);
            let (f, hh, ww) = (tok / (hp * wp), tok / wp % hp, tok % wp);
            assert_eq!(
                *g,
                bf16::from_f32(at(c, f, 2 * hh + kh, 2 * ww + kw)),
                "patchify {dims:?} at {i}"
            );
        }
        // Unpatchify of the head layout (kh, kw, c): built from the latent, it must give it back.
        let head: Vec<f32> = (0..n)
            .map(|i| {
                let (tok, feat) = (i / feats, i % feats);
                let (kh, kw, c) = (feat / (2 * channels), feat / channels % 2, feat % channels);
                let (f, hh, ww) = (tok / (hp * wp), tok / wp % hp, tok % wp);
                at(c, f, 2 * hh + kh, 2 * ww + kw)
            })
            .collect();
        let dh = upload(&stream, &head);
        let mut back = poisoned_f32(&stream, n);
        k.unpatchify(&stream, &dh.as_view(), &mut back.as_view_mut(), dims)
            .unwrap();
        assert_eq!(download(&stream, &back), latent, "unpatchify {dims:?}");
    }
}

#[test]
fn gpu_conversions() {
    let Some((stream, k)) = gpu("gpu_conversions") else {
        return;
    };
    for (seed, n) in [1usize, 7, 8, 1000, 4099].into_iter().enumerate() {
        let mut x = values(n, seed as u32, 0.0, 1e3);
        x[0] = f32::NAN;
        let dx = upload(&stream, &x);
        for skip in [0, 1.min(n - 1)] {
            let m = n - skip;
            let mut b = poisoned_bf16(&stream, m);
            k.f32_to_bf16(&stream, &dx.slice(skip..), &mut b.as_view_mut(), m)
                .unwrap();
            let got = download(&stream, &b);
            for (g, w) in got.iter().zip(&x[skip..]) {
                assert!(
                    g.to_bits() == bf16::from_f32(*w).to_bits() || (g.is_nan() && w.is_nan()),
                    "f32_to_bf16 {w}"
                );
            }
            let db = upload(&stream, &got);
            let mut f = poisoned_f32(&stream, m);
            k.bf16_to_f32(&stream, &db.as_view(), &mut f.as_view_mut(), m)
                .unwrap();
            for (g, w) in download(&stream, &f).iter().zip(&got) {
                assert!(
                    g.to_bits() == w.to_f32().to_bits() || (g.is_nan() && w.is_nan()),
                    "bf16_to_f32 {w}"
                );
            }
        }
    }
    // Every fp8 code, repeated to odd lengths, with and without a scale, aligned and not.
    let codes: Vec<u8> = (0..=255u8).cycle().take(256 * 3 + 5).collect();
    let dc = upload(&stream, &codes);
    for (format, decode) in [
        (Fp8Format::E4M3Fn, fp8::e4m3_to_f32 as fn(u8) -> f32),
        (Fp8Format::E5M2, fp8::e5m2_to_f32),
    ] {
        for scale in [1.0f32, 0.0173] {
            for skip in [0, 3] {
                let m = codes.len() - skip;
                let mut out = poisoned_bf16(&stream, m);
                k.fp8_to_bf16(
                    &stream,
                    &dc.slice(skip..),
                    format,
                    scale,
                    &mut out.as_view_mut(),
                    m,
                )
                .unwrap();
                for (g, &c) in download(&stream, &out).iter().zip(&codes[skip..]) {
                    let w = bf16::from_f32(decode(c) * scale);
                    assert!(
                        g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                        "{format:?} code {c:#04x} scale {scale}: got {g}, want {w}"
                    );
                }
            }
        }
    }
}

#[test]
fn gpu_attention() {
    let Some((stream, k)) = gpu("gpu_attention") else {
        return;
    };
    let shapes = [
        (1, 1, 1, 1, 64),
        (1, 63, 65, 2, 64),
        (2, 100, 37, 3, 64),
        (1, ATTENTION_BLOCK_M + 1, 130, 2, 128),
        (1, 77, 512, 2, 128),
        (2, 1000, 1003, 12, 128),
        (1, 3, 0, 2, 128),
    ];
    for (seed, &(batch, q_len, kv_len, heads, head_dim)) in shapes.iter().enumerate() {
        let dims = AttnDims {
            batch,
            q_len,
            kv_len,
            heads,
            head_dim,
        };
        let nq = batch * q_len * heads * head_dim;
        let [q, kk, v] = attention_inputs(dims, seed as u32 * 8, false);
        let scale = 1.0 / (head_dim as f32).sqrt();
        let (dq, dk, dv) = (
            upload(&stream, &q),
            upload(&stream, &kk),
            upload(&stream, &v),
        );
        let mut out = poisoned_bf16(&stream, nq);
        k.attention(
            &stream,
            &dq.as_view(),
            &dk.as_view(),
            &dv.as_view(),
            &mut out.as_view_mut(),
            dims,
            scale,
        )
        .unwrap();
        let got = widen(&download(&stream, &out));
        let emulated = flash_attention_bf16(&q, &kk, &v, dims, scale).unwrap();
        // Against the emulation: the same roundings, so only f32 summation order differs.
        assert_close(
            &format!("attention {dims:?} vs emulation"),
            &got,
            &emulated,
            BF16_REL,
            1e-3,
        );
        // Against the CPU backend (f32 throughout): within the bf16 budget.
        let mut want = vec![0f32; nq];
        let opts = AttnOpts {
            scale,
            kv_lens: None,
            bias: None,
            bias_per_batch: false,
        };
        cpu::attention::attention(&widen(&q), &widen(&kk), &widen(&v), dims, &opts, &mut want)
            .unwrap();
        let rel = rel_l2(&got, &want);
        assert!(
            rel < 1.0 / 256.0,
            "attention {dims:?}: rel_l2 {rel:.3e} against the CPU backend"
        );
    }
}

#[test]
fn gpu_launchers_refuse_bad_arguments() {
    let Some((stream, k)) = gpu("gpu_launchers_refuse_bad_arguments") else {
        return;
    };
    let buf = upload(&stream, &vec![bf16::ONE; 2 * 64 + 1]);
    let mut out = poisoned_bf16(&stream, 2 * 64 + 1);
    let dims = AttnDims {
        batch: 1,
        q_len: 2,
        kv_len: 2,
        heads: 1,
        head_dim: 64,
    };
    // Wrong length, unsupported head dim, unaligned view: typed errors, nothing launched.
    assert!(k
        .attention(
            &stream,
            &buf.as_view(),
            &buf.slice(..128),
            &buf.slice(..128),
            &mut out.slice_mut(..128),
            dims,
            1.0
        )
        .is_err());
    let odd = AttnDims {
        head_dim: 32,
        q_len: 4,
        kv_len: 4,
        ..dims
    };
    assert!(k
        .attention(
            &stream,
            &buf.slice(..128),
            &buf.slice(..128),
            &buf.slice(..128),
            &mut out.slice_mut(..128),
            odd,
            1.0
        )
        .is_err());
    assert!(k
        .attention(
            &stream,
            &buf.slice(1..),
            &buf.slice(..128),
            &buf.slice(..128),
            &mut out.slice_mut(..128),
            dims,
            1.0
        )
        .is_err());
    let g = upload(&stream, &[1.0f32; 3]);
    assert!(k
        .gated_residual_add(
            &stream,
            &mut out.slice_mut(..6),
            &buf.slice(..6),
            &g.as_view(),
            3,
            2
        )
        .is_err());
}
