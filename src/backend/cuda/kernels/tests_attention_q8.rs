//! GPU tests of the 8-bit attention (`kernels/attention_q8.cu`) against its CPU emulation
//! ([`crate::backend::cpu::attention_q8`], the scheme of each kernel's path: `Q8Path::Sm80`,
//! fp16 P·V, on every GPU; `Q8Path::Sm89`, e4m3 P·V, on sm_89 and sm_90 devices) and against
//! exact attention, on random and Wan-shaped inputs of many lengths, including lengths no tile
//! divides. They print a skip reason and pass when no CUDA device (or, for the e4m3 path, no
//! sm_89/sm_90 device) can be used.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream};
use half::bf16;

use super::attention::ATTENTION_BLOCK_M;
use super::attention_q8::attention_q8_workspace_bytes;
use super::tests::{
    assert_close, attention_inputs, download, gpu, poisoned_bf16, rel_l2, upload, widen, BF16_REL,
};
use super::Kernels;
use crate::backend::cpu;
use crate::backend::cpu::attention::{AttnDims, AttnOpts};
use crate::backend::cpu::attention_q8::{attention_q8, Q8Path, Q8Scheme};

/// The kernel's output for `dims` on `path`.
pub(super) fn run(
    stream: &Arc<CudaStream>,
    k: &Kernels,
    [q, kk, v]: &[Vec<bf16>; 3],
    dims: AttnDims,
    scale: f32,
    path: Q8Path,
) -> Vec<f32> {
    let (dq, dk, dv) = (upload(stream, q), upload(stream, kk), upload(stream, v));
    let mut out = poisoned_bf16(stream, q.len());
    let bytes = attention_q8_workspace_bytes(dims, path).unwrap();
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
        path,
    )
    .unwrap();
    widen(&download(stream, &out))
}

/// The compute capability of the device of `stream`, and whether it has the e4m3 kernel's
/// code (sm_89, sm_90).
fn has_fp8(stream: &Arc<CudaStream>) -> ((i32, i32), bool) {
    let cc = stream.context().compute_capability().unwrap();
    (cc, cc == (8, 9) || cc == (9, 0))
}

/// The kernel of `path` against its emulation (within `vs_emulation` rel L2) and against exact
/// f32 attention (within `vs_exact`, the scheme's own error with a margin), on every shape.
fn check_against_emulation(
    stream: &Arc<CudaStream>,
    k: &Kernels,
    path: Q8Path,
    vs_emulation: f64,
    vs_exact: f64,
) {
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
    let scheme = Q8Scheme::for_path(path);
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
            let inp = attention_inputs(dims, seed, wan);
            let scale = 1.0 / (head_dim as f32).sqrt();
            let got = run(stream, k, &inp, dims, scale, path);
            let [q, kk, v] = inp.clone().map(|x| widen(&x));
            let mut emulated = vec![f32::NAN; got.len()];
            attention_q8(&q, &kk, &v, dims, scale, &scheme, &mut emulated).unwrap();
            let what = format!("attention_q8 {path:?} {dims:?} wan={wan}");
            assert_close(
                &format!("{what} vs emulation"),
                &got,
                &emulated,
                2.0 * BF16_REL,
                2e-3,
            );
            let rel = rel_l2(&got, &emulated);
            assert!(
                rel < vs_emulation,
                "{what}: rel_l2 {rel:.3e} against the emulation"
            );
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
                rel < vs_exact,
                "{what}: rel_l2 {rel:.3e} against exact attention"
            );
        }
    }
}

#[test]
fn gpu_attention_q8_matches_its_emulation() {
    let Some((stream, k)) = gpu("gpu_attention_q8_matches_its_emulation") else {
        return;
    };
    // The same quantization and roundings: the f32 summation order, exp2f against std's exp2
    // (a flipped f16 rounding of P at most) and the bf16 output remain. Against exact
    // attention: within the scheme's own bounds (docs/PERF.md).
    check_against_emulation(&stream, &k, Q8Path::Sm80, 4e-3, 2e-2);
}

#[test]
fn gpu_attention_q8_fp8_matches_its_emulation() {
    let test = "gpu_attention_q8_fp8_matches_its_emulation";
    let Some((stream, k)) = gpu(test) else {
        return;
    };
    let ((major, minor), fp8) = has_fp8(&stream);
    if !fp8 {
        println!("{test}: SKIP: the e4m3 kernel needs sm_89 or sm_90, this is sm_{major}{minor}");
        return;
    }
    // The same quantization, e4m3 roundings and two-level accumulation. What remains: the
    // order of the sums inside an MMA and where the hardware truncates its FP22 accumulator
    // (the emulation truncates each MMA's exact sum: at most 2^-13 of the tile's partial sum
    // per MMA, two per tile), exp2f against std's exp2 (a flipped e4m3 rounding of P moves one
    // weight by one e4m3 step, rare: exp2f is within 2 ulp of f32, P's step is 2^-3), the f32
    // order of the row sums, and the bf16 output: the same bounds as the fp16 path. Against
    // exact attention: the e4m3 scheme's error, 3.2-3.5e-2 on the measured inputs
    // (docs/PERF.md), with a margin for these.
    check_against_emulation(&stream, &k, Q8Path::Sm89, 4e-3, 6e-2);
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
    let inp = attention_inputs(dims, 1, false);
    let got = run(&stream, &k, &inp, dims, 0.1, Q8Path::Sm80);
    assert!(got.iter().all(|&x| x == 0.0), "{got:?}");
    // A head_dim without a kernel and a workspace too small are refused before launching; so
    // is the e4m3 path on a device without its code.
    let bad = AttnDims {
        head_dim: 96,
        kv_len: 4,
        ..dims
    };
    let [q, kk, v] = attention_inputs(bad, 2, false);
    let (dq, dk, dv) = (
        upload(&stream, &q),
        upload(&stream, &kk),
        upload(&stream, &v),
    );
    let mut out = poisoned_bf16(&stream, q.len());
    let fits = AttnDims {
        head_dim: 64,
        ..bad
    };
    // (dims, path, workspace bytes): only the last case has a workspace large enough.
    let mut cases = vec![
        (bad, Q8Path::Sm80, 16),
        (fits, Q8Path::Sm80, 16),
        (fits, Q8Path::Sm90, 16),
    ];
    if !has_fp8(&stream).1 {
        let bytes = attention_q8_workspace_bytes(fits, Q8Path::Sm89).unwrap();
        cases.push((fits, Q8Path::Sm89, bytes));
    }
    for (d, path, bytes) in cases {
        let mut ws: CudaSlice<u8> = upload(&stream, &vec![0u8; bytes]);
        let r = k.attention_q8(
            &stream,
            &dq.as_view(),
            &dk.as_view(),
            &dv.as_view(),
            &mut out.as_view_mut(),
            &mut ws.as_view_mut(),
            d,
            0.1,
            path,
        );
        assert!(
            matches!(r, Err(crate::Error::InvalidArgument(_))),
            "{d:?} {path:?}"
        );
    }
}
