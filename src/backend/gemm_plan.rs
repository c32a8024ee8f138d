//! Which GEMM a linear layer takes on a CUDA device, the epilogues fused into it, and a CPU
//! emulation of the fp8 GEMM's arithmetic, so that the choice of path and the error of fp8 are
//! checked on any machine.
//!
//! # Paths ([`gemm_path`])
//! - **bf16** (every GPU): bf16 (or f32 rounded to bf16) weights, bf16 activations, f32
//!   accumulation in cuBLASLt.
//! - **fp8 tensor cores** (sm_89 and sm_90): e4m3fn weights stay e4m3fn with their stored
//!   per-tensor scale (ComfyUI's `scale_weight`, passed to cuBLASLt as `alpha`); the bf16
//!   activations are quantized to e4m3fn with one dynamic scale per tensor
//!   (`amax / 448`, computed on the device and read by cuBLASLt through its B scale pointer).
//!   cuBLASLt's fp8 kernels need the "TN" layout (the weight transposed, as a linear layer's
//!   `[out, in]` weight is) and `in` and `out` multiples of 16; other sizes take the next path.
//! - **weight-only fp8** (sm_80/86, and e5m2 weights everywhere): the fp8 codes are decoded
//!   with their scale into a bf16 scratch buffer, then the bf16 GEMM runs. The scratch comes from
//!   the device's caching allocator, which hands the same buffer back on every call of the same
//!   size. A fused dequant-GEMM kernel would save the scratch's traffic only: for the 1.3B FFN
//!   (8960 × 1536) it is 3 bytes per weight (41 MB, about 10 µs at 4 TB/s), against about 0.9
//!   TFLOP of product at 32,760 tokens (over a millisecond), so the dequant costs under 1%
//!   while cuBLASLt keeps its tuned bf16 kernels.
//!
//! # Why per-tensor activation scales
//! [`ActivationScaling::PerToken`] is the more accurate one on activations whose tokens differ in
//! magnitude (the test `fp8_error_against_bf16` prints both), but cuBLASLt (CUDA 12.x, sm_89/90)
//! takes scalar scales only: a per-token scale would have to be applied by a separate pass after
//! the GEMM, which also moves the bias and GELU epilogues out of cuBLASLt. The per-tensor error
//! measured on DiT-shaped inputs (see `docs/PERF.md`) is within a small factor of the per-token
//! one and far below the bf16 fixture tolerance, so wanrt uses [`ACTIVATION_SCALING`] =
//! per tensor.
//!
//! # e5m2 weights
//! e5m2 has two mantissa bits (e4m3fn three); multiplying such weights by activations quantized
//! to fp8 compounds two coarse roundings, and Wan checkpoints ship e4m3fn. e5m2 weights therefore
//! take the weight-only path on every GPU, keeping the activations in bf16.

use half::bf16;

use crate::tensor::fp8::{e4m3_to_f32, f32_to_e4m3, E4M3_MAX};
use crate::tensor::DType;

/// What cuBLASLt applies to the f32 result before rounding it to bf16 (after the bias).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Epilogue {
    /// Nothing.
    None,
    /// GELU, tanh form (cuBLASLt's `GELU` epilogue is the tanh approximation; PyTorch routes
    /// only `gelu(approximate="tanh")` to it).
    GeluTanh,
}

/// How the activations of the fp8 GEMM are scaled before they are rounded to e4m3fn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActivationScaling {
    /// One scale for the whole activation tensor: `amax / 448`.
    PerTensor,
    /// One scale per row (token): `amax(row) / 448`.
    PerToken,
}

/// The scaling the CUDA fp8 GEMM uses (see the module documentation for why).
pub const ACTIVATION_SCALING: ActivationScaling = ActivationScaling::PerTensor;

/// The GEMM a linear layer runs on a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmPath {
    /// bf16 weights and activations, f32 accumulation.
    Bf16,
    /// e4m3fn weights with their scale times e4m3fn activations with a dynamic per-tensor
    /// scale, f32 accumulation, bf16 output (sm_89, sm_90).
    Fp8E4m3,
    /// fp8 weights decoded (with their scale) into a bf16 scratch, then [`GemmPath::Bf16`].
    DequantToBf16,
}

/// The first compute capability with fp8 tensor cores (Ada, sm_89; Hopper is sm_90).
pub const FP8_MIN_CAPABILITY: (i32, i32) = (8, 9);

/// The alignment (in elements) cuBLASLt's fp8 kernels need of `in` and `out`.
pub const FP8_ALIGNMENT: usize = 16;

/// The path of a linear layer with a `[n, k]` weight stored as `weight` on a GPU of compute
/// capability `capability` (`(major, minor)`).
pub fn gemm_path(capability: (i32, i32), weight: DType, n: usize, k: usize) -> GemmPath {
    match weight {
        DType::F8E4M3
            if capability >= FP8_MIN_CAPABILITY
                && n.is_multiple_of(FP8_ALIGNMENT)
                && k.is_multiple_of(FP8_ALIGNMENT) =>
        {
            GemmPath::Fp8E4m3
        }
        DType::F8E4M3 | DType::F8E5M2 => GemmPath::DequantToBf16,
        _ => GemmPath::Bf16,
    }
}

/// The dequantization scale of values whose largest magnitude is `amax`: `amax / 448`, or 1 for
/// an all-zero (or non-finite) input so that the codes stay 0. The kernel computes the same.
pub fn e4m3_scale(amax: f32) -> f32 {
    if amax > 0.0 && amax.is_finite() {
        amax / E4M3_MAX
    } else {
        1.0
    }
}

/// `x` (`rows × cols`, row-major) quantized to e4m3fn codes with `scaling`; returns the codes
/// and the scales (one, or one per row). A value is encoded as `x · (1 / scale)` with
/// saturation, as the quantize kernel does.
pub fn quantize_e4m3(
    x: &[f32],
    rows: usize,
    cols: usize,
    scaling: ActivationScaling,
) -> (Vec<u8>, Vec<f32>) {
    let amax = |v: &[f32]| v.iter().fold(0f32, |m, a| m.max(a.abs()));
    let scales: Vec<f32> = match scaling {
        ActivationScaling::PerTensor => vec![e4m3_scale(amax(x))],
        ActivationScaling::PerToken => x.chunks(cols.max(1)).map(|r| e4m3_scale(amax(r))).collect(),
    };
    let mut codes = Vec::with_capacity(rows * cols);
    for (r, row) in x.chunks(cols.max(1)).enumerate().take(rows) {
        let inv = 1.0 / scales[r.min(scales.len() - 1)];
        codes.extend(row.iter().map(|&v| f32_to_e4m3(v * inv)));
    }
    (codes, scales)
}

/// The sizes of an emulated linear layer: `x [rows, k] · wᵀ [k, n]`.
#[derive(Clone, Copy, Debug)]
pub struct LinearDims {
    /// Rows (tokens) of `x`.
    pub rows: usize,
    /// Input features.
    pub k: usize,
    /// Output features.
    pub n: usize,
}

/// The fp8 GEMM's result for activations `x` (bf16 values widened to f32) and an e4m3fn weight
/// (`w_codes`, `[n, k]`, times `w_scale`): the activations quantized with `scaling`, products of
/// the decoded codes accumulated in f32, the scales and then the bias applied in f32, the result
/// rounded to bf16 once (cuBLASLt's fp8 order of operations).
pub fn linear_fp8(
    x: &[f32],
    w_codes: &[u8],
    w_scale: f32,
    bias: Option<&[f32]>,
    d: LinearDims,
    scaling: ActivationScaling,
) -> Vec<f32> {
    let (xq, x_scales) = quantize_e4m3(x, d.rows, d.k, scaling);
    let xq: Vec<f32> = xq.into_iter().map(e4m3_to_f32).collect();
    let w: Vec<f32> = w_codes.iter().map(|&c| e4m3_to_f32(c)).collect();
    let mut out = product(&xq, &w, d);
    for (r, row) in out.chunks_mut(d.n.max(1)).enumerate() {
        let s = x_scales[r.min(x_scales.len() - 1)] * w_scale;
        for (j, o) in row.iter_mut().enumerate() {
            *o = to_bf16(*o * s + bias.map_or(0.0, |b| b[j]));
        }
    }
    out
}

/// The bf16 GEMM's result for activations `x` and weight `w` (`[n, k]`, f32 values): both
/// rounded to bf16, products accumulated in f32, the bias added in f32, the result rounded to
/// bf16 once.
pub fn linear_bf16(x: &[f32], w: &[f32], bias: Option<&[f32]>, d: LinearDims) -> Vec<f32> {
    let xb: Vec<f32> = x.iter().map(|&v| to_bf16(v)).collect();
    let wb: Vec<f32> = w.iter().map(|&v| to_bf16(v)).collect();
    let mut out = product(&xb, &wb, d);
    for row in out.chunks_mut(d.n.max(1)) {
        for (j, o) in row.iter_mut().enumerate() {
            *o = to_bf16(*o + bias.map_or(0.0, |b| b[j]));
        }
    }
    out
}

/// `x · wᵀ` accumulated in f32.
fn product(x: &[f32], w: &[f32], d: LinearDims) -> Vec<f32> {
    let mut out = vec![0f32; d.rows * d.n];
    for (xr, o) in x.chunks(d.k.max(1)).zip(out.chunks_mut(d.n.max(1))) {
        for (wr, oj) in w.chunks(d.k.max(1)).zip(o.iter_mut()) {
            *oj = xr.iter().zip(wr).map(|(a, b)| a * b).sum();
        }
    }
    out
}

fn to_bf16(v: f32) -> f32 {
    bf16::from_f32(v).to_f32()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::random;

    #[test]
    fn path_per_capability_and_dtype() {
        let (n, k) = (1536, 8960);
        for cc in [(8, 0), (8, 6), (8, 7)] {
            assert_eq!(gemm_path(cc, DType::F8E4M3, n, k), GemmPath::DequantToBf16);
        }
        for cc in [(8, 9), (9, 0), (10, 0), (12, 0)] {
            assert_eq!(gemm_path(cc, DType::F8E4M3, n, k), GemmPath::Fp8E4m3);
            assert_eq!(gemm_path(cc, DType::F8E5M2, n, k), GemmPath::DequantToBf16);
            // Sizes cuBLASLt's fp8 kernels refuse fall back to the weight-only path.
            assert_eq!(
                gemm_path(cc, DType::F8E4M3, 1000, k),
                GemmPath::DequantToBf16
            );
            assert_eq!(gemm_path(cc, DType::F8E4M3, n, 36), GemmPath::DequantToBf16);
        }
        for dtype in [DType::BF16, DType::F32] {
            assert_eq!(gemm_path((9, 0), dtype, n, k), GemmPath::Bf16);
            assert_eq!(gemm_path((8, 0), dtype, n, k), GemmPath::Bf16);
        }
    }

    #[test]
    fn quantize_scales_and_saturates() {
        let x = [0.0, 1.0, -2.0, 4.0, 0.0, 0.0, 0.5, -0.25];
        let (codes, scales) = quantize_e4m3(&x, 2, 4, ActivationScaling::PerToken);
        assert_eq!(scales, vec![4.0 / 448.0, 0.5 / 448.0]);
        // Each row's largest magnitude maps to ±448 exactly.
        assert_eq!(e4m3_to_f32(codes[3]), 448.0);
        assert_eq!(e4m3_to_f32(codes[6]), 448.0);
        assert_eq!(e4m3_to_f32(codes[2]), -224.0);
        let (codes, scales) = quantize_e4m3(&x, 2, 4, ActivationScaling::PerTensor);
        assert_eq!(scales, vec![4.0 / 448.0]);
        assert_eq!(e4m3_to_f32(codes[7]), -28.0);
        let (codes, scales) = quantize_e4m3(&[0.0; 4], 1, 4, ActivationScaling::PerTensor);
        assert_eq!((codes, scales), (vec![0; 4], vec![1.0]));
    }

    /// Relative L2 error of `got` against `want`.
    fn rel_l2(got: &[f32], want: &[f64]) -> f64 {
        let (mut num, mut den) = (0f64, 0f64);
        for (&g, &w) in got.iter().zip(want) {
            num += (g as f64 - w).powi(2);
            den += w * w;
        }
        (num / den).sqrt()
    }

    /// Activations shaped like the DiT's: rows (tokens) whose magnitudes spread over two
    /// decades and a few channels 20× larger than the rest (as after the modulated norm).
    fn dit_like_activations(rows: usize, k: usize, seed: u32) -> Vec<f32> {
        let u = random::values(rows * k, seed);
        let token = random::values(rows, seed + 1);
        let mut x = Vec::with_capacity(rows * k);
        for r in 0..rows {
            let mag = 10f32.powf(token[r]); // 0.1 .. 10
            for c in 0..k {
                let outlier = if c % 97 == 0 { 20.0 } else { 1.0 };
                x.push(to_bf16(u[r * k + c] * mag * outlier));
            }
        }
        x
    }

    /// The fp8 paths' error against the exact product on DiT-shaped inputs, beside the bf16
    /// path's: the numbers `docs/PERF.md` quotes (`cargo test --lib fp8_error -- --nocapture`).
    #[test]
    fn fp8_error_against_bf16() {
        // The 1.3B model's attention projection (k = 1536) and FFN down projection (k = 8960),
        // a slice of the output features and tokens.
        for (rows, k, n) in [(96, 1536, 64), (32, 8960, 32)] {
            let d = LinearDims { rows, k, n };
            let x = dit_like_activations(rows, k, 11);
            // A ComfyUI scaled-fp8 weight: codes of w / scale with scale = amax / 448.
            let amp = (3.0 / k as f32).sqrt();
            let w: Vec<f32> = random::values(n * k, 12).iter().map(|v| v * amp).collect();
            let w_scale = e4m3_scale(amp);
            let w_codes: Vec<u8> = w.iter().map(|&v| f32_to_e4m3(v / w_scale)).collect();
            let w_stored: Vec<f32> = w_codes.iter().map(|&c| e4m3_to_f32(c) * w_scale).collect();
            let bias: Vec<f32> = random::values(n, 13).iter().map(|v| v * 0.02).collect();
            // The exact product with the weight as stored, in f64.
            let want: Vec<f64> = (0..rows * n)
                .map(|i| {
                    let (r, j) = (i / n, i % n);
                    let dot: f64 = (0..k)
                        .map(|c| x[r * k + c] as f64 * w_stored[j * k + c] as f64)
                        .sum();
                    dot + bias[j] as f64
                })
                .collect();
            let bf16_err = rel_l2(&linear_bf16(&x, &w_stored, Some(&bias), d), &want);
            let errs = [ActivationScaling::PerTensor, ActivationScaling::PerToken].map(|s| {
                let got = linear_fp8(&x, &w_codes, w_scale, Some(&bias), d, s);
                // The worst token matters too: per-tensor scaling squeezes small tokens.
                let worst = (0..rows)
                    .map(|r| rel_l2(&got[r * n..][..n], &want[r * n..][..n]))
                    .fold(0f64, f64::max);
                (rel_l2(&got, &want), worst)
            });
            println!(
                "fp8 GEMM [{rows}, {k}] x [{n}, {k}]: rel_l2 bf16 {bf16_err:.2e}, \
                 fp8 per-tensor {:.2e} (worst token {:.2e}), per-token {:.2e} (worst token {:.2e})",
                errs[0].0, errs[0].1, errs[1].0, errs[1].1
            );
            assert!(bf16_err < 4e-3, "bf16 {bf16_err}");
            // e4m3 keeps 3 mantissa bits: a relative step of 1/16, about 2.6% rms per value,
            // averaged down over the dot product.
            assert!(errs[1].0 < 0.05, "per-token {:?}", errs[1]);
            assert!(errs[0].0 < 0.05, "per-tensor {:?}", errs[0]);
            assert!(
                errs[1].1 <= errs[0].1,
                "per-token is never worse on the worst token"
            );
        }
    }
}
