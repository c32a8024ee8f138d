//! GPU tests of the 8-bit attention (`kernels/attention_q8.cu`) against its CPU emulation
//! (`Q8Path::Sm80` of [`crate::backend::cpu::attention_q8`]) and against exact attention, on
//! random and Wan-shaped inputs of many lengths, including lengths no tile divides. They print a
//! skip reason and pass when no CUDA device can be used.

use cudarc::driver::CudaSlice;
use half::bf16;

use super::attention::ATTENTION_BLOCK_M;
use super::attention_q8::attention_q8_workspace_bytes;
use super::tests::{
    assert_close, bf16s, download, gpu, poisoned_bf16, upload, values, widen, BF16_REL,
};
use crate::backend::cpu;
use crate::backend::cpu::attention::{AttnDims, AttnOpts};
use crate::backend::cpu::attention_q8::{attention_q8, Q8Path, Q8Scheme};
use crate::backend::q8_kernel::Q8Kernel;

/// Relative L2 distance of `got` from `want`.
pub(super) fn rel_l2(got: &[f32], want: &[f32]) -> f64 {
    let num: f64 = got
        .iter()
        .zip(want)
        .map(|(g, w)| ((g - w) as f64).powi(2))
        .sum();
    let den: f64 = want.iter().map(|w| (*w as f64).powi(2)).sum();
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

/// q, k, v of `dims`: `wan` gives q and k unit-RMS rows with a few K channels offset (what the
/// smoothing removes) and V with a mean (what the V smoothing removes), as the DiT's
/// self-attention after RMSNorm and RoPE; otherwise uniform values.
pub(super) fn inputs(dims: AttnDims, seed: u32, wan: bool) -> [Vec<bf16>; 3] {
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

/// The output of `kernel` for `dims`.
pub(super) fn run(
    stream: &std::sync::Arc<cudarc::driver::CudaStream>,
    k: &super::Kernels,
    [q, kk, v]: &[Vec<bf16>; 3],
    dims: AttnDims,
    scale: f32,
    kernel: Q8Kernel,
) -> Vec<f32> {
    let (dq, dk, dv) = (upload(stream, q), upload(stream, kk), upload(stream, v));
    let mut out = poisoned_bf16(stream, q.len());
    let bytes = attention_q8_workspace_bytes(dims).unwrap();
    let mut ws: CudaSlice<u8> = upload(stream, &vec![0xa5u8; bytes.max(1)]);
    k.attention_q8(
        stream,
        &dq.as_view(),
        &dk.as_view(),
        &dv.as_view(),
        &mut out.as_view_mut(),
        &mut ws.as_view_mut(),
        dims,
        scale,
        kernel,
    )
    .unwrap();
    widen(&download(stream, &out))
}

#[test]
fn gpu_attention_q8_matches_its_emulation() {
    let Some((stream, k)) = gpu("gpu_attention_q8_matches_its_emulation") else {
        return;
    };
    let shapes = [
        (1, 1, 1, 1, 64),
        (1, 63, 65, 2, 64),
        (2, 100, 37, 3, 64),
        (1, ATTENTION_BLOCK_M + 1, 130, 2, 128),
        (1, 77, 512, 2, 128),
        (1, 129, 1, 1, 128),
        (2, 1000, 1003, 12, 128),
        (1, 3120, 3120, 2, 128),
    ];
    let scheme = Q8Scheme::for_path(Q8Path::Sm80);
    for (seed, &(batch, q_len, kv_len, heads, head_dim)) in shapes.iter().enumerate() {
        let dims = AttnDims {
            batch,
            q_len,
            kv_len,
            heads,
            head_dim,
        };
        for wan in [false, true] {
            let seed = seed as u32 * 8 + wan as u32 * 4;
            let inp = inputs(dims, seed, wan);
            let scale = 1.0 / (head_dim as f32).sqrt();
            let got = run(&stream, &k, &inp, dims, scale, Q8Kernel::MmaSync);
            let [q, kk, v] = inp.clone().map(|x| widen(&x));
            let mut emulated = vec![f32::NAN; got.len()];
            attention_q8(&q, &kk, &v, dims, scale, &scheme, &mut emulated).unwrap();
            // The same quantization and roundings: the f32 summation order, exp2f against
            // std's exp2 (a flipped f16 rounding of P at most) and the bf16 output remain.
            let what = format!("attention_q8 {dims:?} wan={wan}");
            assert_close(
                &format!("{what} vs emulation"),
                &got,
                &emulated,
                2.0 * BF16_REL,
                2e-3,
            );
            let rel = rel_l2(&got, &emulated);
            assert!(rel < 4e-3, "{what}: rel_l2 {rel:.3e} against the emulation");
            // Against exact f32 attention: within the scheme's own bounds (docs/PERF.md).
            let mut exact = vec![0f32; got.len()];
            let opts = AttnOpts {
                scale,
                kv_lens: None,
                bias: None,
                bias_per_batch: false,
            };
            cpu::attention::attention(&q, &kk, &v, dims, &opts, &mut exact).unwrap();
            let rel = rel_l2(&got, &exact);
            assert!(
                rel < 2e-2,
                "{what}: rel_l2 {rel:.3e} against exact attention"
            );
        }
    }
}

#[test]
fn gpu_attention_q8_edges_and_bad_arguments() {
    let Some((stream, k)) = gpu("gpu_attention_q8_edges_and_bad_arguments") else {
        return;
    };
    let dims = AttnDims {
        batch: 1,
        q_len: 3,
        kv_len: 0,
        heads: 2,
        head_dim: 128,
    };
    // No keys: zeros, every value written.
    let inp = inputs(dims, 1, false);
    let got = run(&stream, &k, &inp, dims, 0.1, Q8Kernel::MmaSync);
    assert!(got.iter().all(|&x| x == 0.0), "{got:?}");
    // A head_dim without a kernel, and a workspace too small, are refused before launching.
    let bad = AttnDims {
        head_dim: 96,
        kv_len: 4,
        ..dims
    };
    let [q, kk, v] = inputs(bad, 2, false);
    let (dq, dk, dv) = (
        upload(&stream, &q),
        upload(&stream, &kk),
        upload(&stream, &v),
    );
    let mut out = poisoned_bf16(&stream, q.len());
    let mut ws: CudaSlice<u8> = upload(&stream, &[0u8; 16]);
    for d in [
        bad,
        AttnDims {
            head_dim: 64,
            ..bad
        },
    ] {
        let r = k.attention_q8(
            &stream,
            &dq.as_view(),
            &dk.as_view(),
            &dv.as_view(),
            &mut out.as_view_mut(),
            &mut ws.as_view_mut(),
            d,
            0.1,
            Q8Kernel::MmaSync,
        );
        assert!(matches!(r, Err(crate::Error::InvalidArgument(_))), "{d:?}");
    }
}
