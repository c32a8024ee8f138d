//! The ops of `wanrt::backend::cuda::ops` that have CUDA kernels, against the CPU backend on
//! random inputs of several shapes (odd sizes included), at bf16 tolerances. Each case draws
//! fresh inputs and fills the allocator's cache with NaN buffers of the output's size first, so
//! an output value the kernel never wrote cannot pass. Compiled in every build; without a CUDA
//! device every test prints why it skipped.

use wanrt::backend::gemm_plan::{self, gemm_path, ActivationScaling, GemmPath, LinearDims};
use wanrt::backend::staging::STAGING_BUFFER_BYTES;
use wanrt::backend::{cuda, Device};
use wanrt::tensor::ops::{attention, embedding, AttentionParams};
use wanrt::tensor::{DType, Tensor, Weight};
use wanrt::Error;

mod common;

use common::cuda_device as gpu;

/// `n` values in `[-amp, amp)` from a seeded generator (a 32-bit LCG), rounded to bf16 so that
/// the CPU and the GPU see the same inputs.
fn values(n: usize, seed: u32, amp: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let u = (s >> 8) as f32 / (1u32 << 24) as f32;
            half::bf16::from_f32(amp * (2.0 * u - 1.0)).to_f32()
        })
        .collect()
}

/// A host f32 tensor of random values.
fn host(dims: &[usize], seed: u32, amp: f32) -> Tensor {
    let n = dims.iter().product();
    Tensor::from_f32(values(n, seed, amp), dims).unwrap()
}

/// `x` as bf16 on `dev`.
fn on(dev: Device, x: &Tensor) -> Tensor {
    x.to_dtype(DType::BF16).unwrap().to_device(dev).unwrap()
}

/// Leaves NaN buffers of `bytes` bytes in the device's cache, so that the next output of that
/// size is allocated over NaNs.
fn poison(dev: Device, bytes: usize) {
    let nan = Tensor::from_bytes(vec![0xff; bytes], DType::U8, [bytes]).unwrap();
    let on_dev = nan.to_device(dev).unwrap();
    drop(on_dev);
}

/// The values of a CUDA result on the host, as f32.
fn fetch(x: &Tensor) -> Vec<f32> {
    x.to_device(Device::Cpu).unwrap().to_f32_vec().unwrap()
}

/// Asserts that `got` is finite and within relative L2 distance `tol` of `want`.
fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    assert!(
        got.iter().all(|v| v.is_finite()),
        "{what}: non-finite output"
    );
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for (&g, &w) in got.iter().zip(want) {
        diff += (f64::from(g) - f64::from(w)).powi(2);
        norm += f64::from(w).powi(2);
    }
    let rel = (diff / norm.max(1e-30)).sqrt();
    assert!(rel <= tol, "{what}: relative L2 error {rel:e} > {tol:e}");
}

/// bf16 output rounding alone gives a relative error near 2⁻⁹; this leaves room for the f32 vs
/// f64 statistics and one extra bf16 rounding inside a kernel.
const BF16_TOL: f64 = 1e-2;

#[test]
fn layer_norm_matches_the_cpu() {
    let Some(dev) = gpu("layer_norm_matches_the_cpu") else {
        return;
    };
    for (i, dims) in [&[1, 1][..], &[3, 7], &[2, 3, 13], &[5, 1536], &[17, 130]]
        .into_iter()
        .enumerate()
    {
        let seed = 10 * i as u32;
        let cols = *dims.last().unwrap();
        let x = host(dims, seed, 3.0);
        let w = Weight::new(host(&[cols], seed + 1, 1.0));
        let b = Weight::new(host(&[cols], seed + 2, 0.5));
        for affine in [false, true] {
            let (wc, bc) = if affine {
                (Some(&w), Some(&b))
            } else {
                (None, None)
            };
            let want = x.layer_norm(wc, bc, 1e-6).unwrap().to_f32_vec().unwrap();
            let (wd, bd) = (
                Weight::new(w.tensor.to_device(dev).unwrap()),
                Weight::new(
                    b.tensor
                        .to_dtype(DType::BF16)
                        .unwrap()
                        .to_device(dev)
                        .unwrap(),
                ),
            );
            let (wd, bd) = if affine {
                (Some(&wd), Some(&bd))
            } else {
                (None, None)
            };
            poison(dev, x.elem_count() * 2);
            let got = on(dev, &x).layer_norm(wd, bd, 1e-6).unwrap();
            assert_eq!((got.dims(), got.dtype()), (dims, DType::BF16));
            assert_close(
                &format!("layer_norm {dims:?} affine={affine}"),
                &fetch(&got),
                &want,
                BF16_TOL,
            );
        }
    }
}

#[test]
fn rms_norm_matches_the_cpu() {
    let Some(dev) = gpu("rms_norm_matches_the_cpu") else {
        return;
    };
    for (i, dims) in [&[1, 2][..], &[3, 8], &[2, 3, 14], &[4, 130], &[5, 1536]]
        .into_iter()
        .enumerate()
    {
        let seed = 100 + 10 * i as u32;
        let cols = *dims.last().unwrap();
        let x = host(dims, seed, 2.0);
        let w = Weight::new(host(&[cols], seed + 1, 1.5));
        let want = x.rms_norm(Some(&w), 1e-6).unwrap().to_f32_vec().unwrap();
        let wd = Weight::new(w.tensor.to_device(dev).unwrap());
        poison(dev, x.elem_count() * 2);
        let got = on(dev, &x).rms_norm(Some(&wd), 1e-6).unwrap();
        assert_close(&format!("rms_norm {dims:?}"), &fetch(&got), &want, BF16_TOL);
        let plain = x.rms_norm(None, 1e-6).unwrap().to_f32_vec().unwrap();
        let got = on(dev, &x).rms_norm(None, 1e-6).unwrap();
        assert_close(
            &format!("rms_norm {dims:?} no gain"),
            &fetch(&got),
            &plain,
            BF16_TOL,
        );
    }
    let odd = on(dev, &host(&[2, 7], 1, 1.0))
        .rms_norm(None, 1e-6)
        .unwrap_err();
    assert!(matches!(odd, Error::Device(_)), "{odd}");
}

#[test]
fn gelu_tanh_matches_the_cpu() {
    let Some(dev) = gpu("gelu_tanh_matches_the_cpu") else {
        return;
    };
    for (i, dims) in [&[1][..], &[7], &[1000], &[3, 1537]]
        .into_iter()
        .enumerate()
    {
        let x = host(dims, 200 + i as u32, 4.0);
        let want = x.gelu_tanh().unwrap().to_f32_vec().unwrap();
        poison(dev, x.elem_count() * 2);
        let got = on(dev, &x).gelu_tanh().unwrap();
        assert_close(
            &format!("gelu_tanh {dims:?}"),
            &fetch(&got),
            &want,
            BF16_TOL,
        );
    }
}

#[test]
fn dtype_conversions_match_the_cpu_exactly() {
    let Some(dev) = gpu("dtype_conversions_match_the_cpu_exactly") else {
        return;
    };
    for (i, n) in [1usize, 7, 8, 1001].into_iter().enumerate() {
        // Unrounded f32 values, so that f32 -> bf16 rounding is exercised.
        let raw: Vec<f32> = values(n, 300 + i as u32, 100.0)
            .iter()
            .zip(values(n, 400 + i as u32, 0.01))
            .map(|(a, b)| a + b)
            .collect();
        let x = Tensor::from_f32(raw, [n]).unwrap();
        let xd = x.to_device(dev).unwrap();
        poison(dev, n * 2);
        let b = xd.to_dtype(DType::BF16).unwrap();
        let want = x.to_dtype(DType::BF16).unwrap();
        assert_eq!(
            b.to_device(Device::Cpu).unwrap().raw_bytes().unwrap(),
            want.raw_bytes().unwrap(),
            "f32 -> bf16, n={n}"
        );
        poison(dev, n * 4);
        let back = b.to_dtype(DType::F32).unwrap();
        assert_eq!(
            fetch(&back),
            want.to_f32_vec().unwrap(),
            "bf16 -> f32, n={n}"
        );
        for fp8 in [DType::F8E4M3, DType::F8E5M2] {
            let codes = x.to_dtype(fp8).unwrap();
            poison(dev, n * 2);
            let got = codes.to_device(dev).unwrap().to_dtype(DType::BF16).unwrap();
            let want = codes.to_dtype(DType::BF16).unwrap();
            assert_eq!(
                got.to_device(Device::Cpu).unwrap().raw_bytes().unwrap(),
                want.raw_bytes().unwrap(),
                "{fp8:?} -> bf16, n={n}"
            );
        }
    }
}

#[test]
fn attention_matches_the_cpu_and_refuses_what_it_lacks() {
    let Some(dev) = gpu("attention_matches_the_cpu_and_refuses_what_it_lacks") else {
        return;
    };
    // (batch, q_len, kv_len, heads, head_dim, kv_lens)
    let cases: [(usize, usize, usize, usize, usize, Option<usize>); 5] = [
        (1, 1, 1, 1, 64, None),
        (2, 65, 33, 3, 64, None),
        (1, 130, 77, 2, 128, None),
        (1, 64, 200, 12, 128, Some(150)),
        (3, 17, 129, 1, 128, None),
    ];
    for (i, &(b, sq, sk, h, d, len)) in cases.iter().enumerate() {
        let seed = 500 + 10 * i as u32;
        let q = host(&[b, sq, h, d], seed, 1.0);
        let k = host(&[b, sk, h, d], seed + 1, 1.0);
        let v = host(&[b, sk, h, d], seed + 2, 1.0);
        let lens = len.map(|l| vec![l]);
        let p = AttentionParams {
            scale: 1.0 / (d as f32).sqrt(),
            kv_lens: lens.as_deref(),
            bias: None,
        };
        let want = attention(&q, &k, &v, &p).unwrap().to_f32_vec().unwrap();
        poison(dev, q.elem_count() * 2);
        let got = attention(&on(dev, &q), &on(dev, &k), &on(dev, &v), &p).unwrap();
        assert_eq!(got.dims(), q.dims());
        assert_close(&format!("attention case {i}"), &fetch(&got), &want, 2e-2);
    }
    let (q, k) = (
        on(dev, &host(&[1, 4, 2, 80], 1, 1.0)),
        on(dev, &host(&[1, 4, 2, 80], 2, 1.0)),
    );
    let p = AttentionParams {
        scale: 0.1,
        kv_lens: None,
        bias: None,
    };
    let e = attention(&q, &k, &k, &p).unwrap_err();
    assert!(
        matches!(e, Error::Device(_)) && e.to_string().contains("head_dim 80"),
        "{e}"
    );
    let q = on(dev, &host(&[1, 4, 1, 64], 3, 1.0));
    let bias = Tensor::from_f32(vec![0.0; 16], [1, 4, 4])
        .unwrap()
        .to_device(dev)
        .unwrap();
    let p = AttentionParams {
        scale: 0.1,
        kv_lens: None,
        bias: Some(&bias),
    };
    let e = attention(&q, &q, &q, &p).unwrap_err();
    assert!(
        matches!(e, Error::Device(_)) && e.to_string().contains("bias"),
        "{e}"
    );
}

#[test]
fn matmul_matches_the_cpu_batched_and_shared() {
    let Some(dev) = gpu("matmul_matches_the_cpu_batched_and_shared") else {
        return;
    };
    // (lhs dims, rhs dims)
    let cases: [(&[usize], &[usize]); 4] = [
        (&[1, 1], &[1, 1]),
        (&[3, 7, 13], &[13, 5]),
        (&[2, 3, 17, 64], &[2, 3, 64, 33]),
        (&[4, 65, 128], &[4, 128, 130]),
    ];
    for (i, &(ad, bd)) in cases.iter().enumerate() {
        let seed = 700 + 10 * i as u32;
        let (a, b) = (host(ad, seed, 1.0), host(bd, seed + 1, 1.0));
        let want = a.matmul(&b).unwrap().to_f32_vec().unwrap();
        poison(dev, want.len() * 2);
        let got = on(dev, &a).matmul(&on(dev, &b)).unwrap();
        assert_close(
            &format!("matmul {ad:?} x {bd:?}"),
            &fetch(&got),
            &want,
            BF16_TOL,
        );
    }
}

/// `x` on `dev` in `dtype` (bf16 or f32).
fn on_as(dev: Device, x: &Tensor, dtype: DType) -> Tensor {
    x.to_dtype(dtype).unwrap().to_device(dev).unwrap()
}

/// Asserts that two value lists are equal bit for bit (NaN equal to NaN).
fn assert_same(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
            "{what}: element {i}: {g} != {w}"
        );
    }
}

/// The CPU's f32 result as the CUDA op stores it in `dtype` (bf16: rounded once).
fn stored_as(want: &Tensor, dtype: DType) -> Vec<f32> {
    want.to_dtype(dtype).unwrap().to_f32_vec().unwrap()
}

/// A tensor op of one and of two operands, and a reduction over a dim.
type Op1 = fn(&Tensor) -> wanrt::Result<Tensor>;
type Op2 = fn(&Tensor, &Tensor) -> wanrt::Result<Tensor>;
type OpDim = fn(&Tensor, usize) -> wanrt::Result<Tensor>;

/// Both activation dtypes of the CUDA backend.
const ACTIVATIONS: [DType; 2] = [DType::BF16, DType::F32];

#[test]
fn binary_ops_broadcast_in_every_dtype_mix_as_the_cpu() {
    let Some(dev) = gpu("binary_ops_broadcast_in_every_dtype_mix_as_the_cpu") else {
        return;
    };
    let shapes: [(&[usize], &[usize]); 9] = [
        (&[2, 3, 4], &[4]),
        (&[2, 5, 8], &[2, 1, 8]),
        (&[7], &[7]),
        (&[], &[3, 1]),
        (&[3, 1], &[1, 5]),
        (&[1, 1536], &[33, 1536]),
        (&[2, 9, 24], &[2, 9, 1]),
        (&[4, 0], &[4, 1]),
        (&[1, 6, 40], &[1, 6, 40]),
    ];
    let ops: [(&str, Op2); 4] = [
        ("add", Tensor::add),
        ("sub", Tensor::sub),
        ("mul", Tensor::mul),
        ("div", Tensor::div),
    ];
    for (i, (ad, bd)) in shapes.into_iter().enumerate() {
        for (j, (name, op)) in ops.iter().enumerate() {
            let seed = 1000 + 10 * i as u32 + j as u32;
            let (a, b) = (host(ad, seed, 3.0), host(bd, seed + 500, 2.0));
            let want = op(&a, &b).unwrap();
            for da in ACTIVATIONS {
                for db in ACTIVATIONS {
                    let out = if da == DType::F32 || db == DType::F32 {
                        DType::F32
                    } else {
                        DType::BF16
                    };
                    poison(dev, want.elem_count() * out.size_in_bytes());
                    let got = op(&on_as(dev, &a, da), &on_as(dev, &b, db)).unwrap();
                    assert_eq!((got.dtype(), got.dims()), (out, want.dims()));
                    assert_same(
                        &format!("{name} {ad:?} {da} with {bd:?} {db}"),
                        &fetch(&got),
                        &stored_as(&want, out),
                    );
                }
            }
        }
    }
}

#[test]
fn every_unary_op_matches_the_cpu() {
    let Some(dev) = gpu("every_unary_op_matches_the_cpu") else {
        return;
    };
    let ops: [(&str, Op1); 11] = [
        ("silu", Tensor::silu),
        ("gelu_tanh", Tensor::gelu_tanh),
        ("gelu_erf", Tensor::gelu_erf),
        ("tanh", Tensor::tanh),
        ("exp", Tensor::exp),
        ("abs", Tensor::abs),
        ("sqr", Tensor::sqr),
        ("sqrt", |x| x.abs()?.sqrt()),
        ("affine", |x| x.affine(1.5, -0.25)),
        ("clamp", |x| x.clamp(-1.0, 0.5)),
        ("exact", |x| x.affine(1.0, 0.0)),
    ];
    for (i, dims) in [&[1][..], &[7], &[1000], &[3, 1537], &[0, 3]]
        .into_iter()
        .enumerate()
    {
        for (j, (name, op)) in ops.iter().enumerate() {
            let x = host(dims, 2000 + 20 * i as u32 + j as u32, 4.0);
            let want = op(&x).unwrap();
            for dtype in ACTIVATIONS {
                poison(dev, x.elem_count() * dtype.size_in_bytes());
                let got = op(&on_as(dev, &x, dtype)).unwrap();
                assert_eq!((got.dtype(), got.dims()), (dtype, x.dims()));
                let what = format!("{name} {dims:?} {dtype}");
                // Transcendentals may differ by a few ulp of f32 from the CPU's polynomials.
                let tol = if dtype == DType::F32 { 1e-6 } else { BF16_TOL };
                if x.elem_count() > 0 {
                    assert_close(&what, &fetch(&got), &want.to_f32_vec().unwrap(), tol);
                }
            }
        }
    }
}

#[test]
fn reductions_and_softmax_match_the_cpu() {
    let Some(dev) = gpu("reductions_and_softmax_match_the_cpu") else {
        return;
    };
    let reductions: [(&str, OpDim); 3] = [
        ("sum", Tensor::sum_keepdim),
        ("mean", Tensor::mean_keepdim),
        ("max", Tensor::max_keepdim),
    ];
    for (i, dims) in [&[3, 5, 7][..], &[2, 1000], &[1037], &[1, 1536], &[4, 33, 1]]
        .into_iter()
        .enumerate()
    {
        for dim in 0..dims.len() {
            for (j, (name, op)) in reductions.iter().enumerate() {
                let x = host(dims, 3000 + 30 * i as u32 + 3 * dim as u32 + j as u32, 2.0);
                let want = op(&x, dim).unwrap();
                for dtype in ACTIVATIONS {
                    poison(dev, want.elem_count() * dtype.size_in_bytes());
                    let got = op(&on_as(dev, &x, dtype), dim).unwrap();
                    assert_eq!((got.dtype(), got.dims()), (dtype, want.dims()));
                    let tol = if dtype == DType::F32 { 1e-5 } else { BF16_TOL };
                    let what = format!("{name} over {dim} of {dims:?} {dtype}");
                    assert_close(&what, &fetch(&got), &want.to_f32_vec().unwrap(), tol);
                }
            }
        }
        let x = host(dims, 3500 + i as u32, 6.0);
        let want = x.softmax_last().unwrap().to_f32_vec().unwrap();
        for dtype in ACTIVATIONS {
            poison(dev, x.elem_count() * dtype.size_in_bytes());
            let got = on_as(dev, &x, dtype).softmax_last().unwrap();
            let tol = if dtype == DType::F32 { 1e-5 } else { BF16_TOL };
            assert_close(
                &format!("softmax {dims:?} {dtype}"),
                &fetch(&got),
                &want,
                tol,
            );
        }
    }
    // NaN propagates through max; an empty dim sums to 0.
    let nan = Tensor::from_f32(vec![1.0, f32::NAN, 3.0], [3]).unwrap();
    let m = nan.to_device(dev).unwrap().max_keepdim(0).unwrap();
    assert!(fetch(&m)[0].is_nan());
    let empty = Tensor::from_f32(vec![], [2, 0])
        .unwrap()
        .to_device(dev)
        .unwrap();
    assert_eq!(fetch(&empty.sum_keepdim(1).unwrap()), [0.0, 0.0]);
}

#[test]
fn rope_interleaved_matches_the_cpu_exactly() {
    let Some(dev) = gpu("rope_interleaved_matches_the_cpu_exactly") else {
        return;
    };
    for (i, dims) in [[2, 5, 3, 16], [1, 7, 2, 6], [1, 3, 1, 128], [2, 1, 12, 2]]
        .into_iter()
        .enumerate()
    {
        let [_, s, _, d] = dims;
        let seed = 4000 + 10 * i as u32;
        let x = host(&dims, seed, 3.0);
        let (cos, sin) = (
            host(&[s, d / 2], seed + 1, 1.0),
            host(&[s, d / 2], seed + 2, 1.0),
        );
        let want = x.rope_interleaved(&cos, &sin).unwrap();
        let (cd, sd) = (cos.to_device(dev).unwrap(), sin.to_device(dev).unwrap());
        for dtype in ACTIVATIONS {
            poison(dev, x.elem_count() * dtype.size_in_bytes());
            let got = on_as(dev, &x, dtype).rope_interleaved(&cd, &sd).unwrap();
            assert_eq!(got.dtype(), dtype);
            assert_same(
                &format!("rope {dims:?} {dtype}"),
                &fetch(&got),
                &stored_as(&want, dtype),
            );
        }
    }
}

#[test]
fn shape_ops_move_every_dtype_as_the_cpu() {
    let Some(dev) = gpu("shape_ops_move_every_dtype_as_the_cpu") else {
        return;
    };
    let ops: [(&str, Op1); 9] = [
        ("permute", |x| x.permute(&[2, 0, 1])),
        ("transpose", |x| x.transpose(1, 2)),
        ("narrow0", |x| x.narrow(0, 1, 1)),
        ("narrow1", |x| x.narrow(1, 1, 2)),
        ("narrow2", |x| x.narrow(2, 3, 5)),
        ("pad", |x| x.pad_zeros(&[(0, 1), (2, 0), (1, 3)])),
        ("pad_last", |x| x.pad_zeros(&[(0, 0), (0, 0), (8, 8)])),
        ("cat1", |x| {
            wanrt::tensor::ops::cat(&[x, &x.narrow(1, 0, 1)?, x], 1)
        }),
        ("cat2", |x| wanrt::tensor::ops::cat(&[x, x], 2)),
    ];
    for (i, dims) in [[2, 3, 8], [3, 5, 17], [2, 2, 64]].into_iter().enumerate() {
        let x = host(&dims, 5000 + i as u32, 8.0);
        for dtype in [DType::BF16, DType::F32, DType::U8, DType::I64] {
            let xt = x.to_dtype(dtype).unwrap();
            let xd = xt.to_device(dev).unwrap();
            for (name, op) in ops {
                let want = op(&xt).unwrap();
                poison(dev, want.elem_count() * dtype.size_in_bytes());
                let got = op(&xd).unwrap();
                assert_eq!((got.dtype(), got.dims()), (dtype, want.dims()));
                assert_eq!(
                    got.to_device(Device::Cpu).unwrap().raw_bytes().unwrap(),
                    want.raw_bytes().unwrap(),
                    "{name} {dims:?} {dtype}"
                );
            }
        }
    }
    // A rank-8 permute (unpatchify's) and a mixed-device cat, which is refused.
    let x = host(&[1, 2, 3, 2, 1, 2, 2, 4], 5100, 1.0);
    let perm = [0, 7, 1, 4, 2, 5, 3, 6];
    let want = x.permute(&perm).unwrap();
    let got = x.to_device(dev).unwrap().permute(&perm).unwrap();
    assert_same("permute rank 8", &fetch(&got), &want.to_f32_vec().unwrap());
    let e = wanrt::tensor::ops::cat(&[&x, &x.to_device(dev).unwrap()], 0).unwrap_err();
    assert!(matches!(e, Error::DeviceMismatch { .. }), "{e}");
}

/// The fp8 GEMM against the exact weight: e4m3's 3 mantissa bits on the activations give a
/// relative error of a few percent (`gemm_plan`'s test measures it).
const FP8_TOL: f64 = 6e-2;

/// The compute capability of `dev`.
fn capability(dev: Device) -> (i32, i32) {
    let Device::Cuda(ordinal) = dev else {
        return (0, 0);
    };
    let devices = cuda::list_devices().unwrap();
    devices[ordinal].compute_capability
}

#[test]
fn linear_matches_the_cpu_for_every_weight_dtype() {
    let Some(dev) = gpu("linear_matches_the_cpu_for_every_weight_dtype") else {
        return;
    };
    // (leading dims of x, in, out)
    let cases: [(&[usize], usize, usize); 5] = [
        (&[1], 8, 8),
        (&[7], 13, 5),
        (&[2, 33], 64, 96),
        (&[1, 130], 1536, 40),
        (&[3], 40, 1537),
    ];
    for (i, &(lead, k, n)) in cases.iter().enumerate() {
        let seed = 600 + 10 * i as u32;
        let x = host(&[lead, &[k]].concat(), seed, 1.0);
        let w = host(&[n, k], seed + 1, 0.1);
        let b = Weight::new(host(&[n], seed + 2, 0.5));
        let fp8 = Weight {
            tensor: w.to_dtype(DType::F8E4M3).unwrap(),
            scale: Some(0.37),
        };
        for (name, w) in [
            ("bf16", Weight::new(w.to_dtype(DType::BF16).unwrap())),
            ("f32", Weight::new(w.clone())),
            ("scaled fp8", fp8),
        ] {
            // On sm_89+ an e4m3 weight of aligned sizes takes the fp8 GEMM, whose activations
            // are quantized too (`linear_fp8_matches_its_emulation` checks it closely).
            let tol = match gemm_path(capability(dev), w.dtype(), n, k) {
                GemmPath::Fp8E4m3 => FP8_TOL,
                _ => BF16_TOL,
            };
            let want = x.linear(&w, Some(&b)).unwrap().to_f32_vec().unwrap();
            let wd = Weight {
                tensor: w.tensor.to_device(dev).unwrap(),
                scale: w.scale,
            };
            let bd = Weight::new(b.tensor.to_device(dev).unwrap());
            let out_bytes = want.len() * 2;
            poison(dev, out_bytes);
            let got = on(dev, &x).linear(&wd, Some(&bd)).unwrap();
            assert_eq!(got.dims(), [lead, &[n]].concat().as_slice());
            let what = format!("linear {lead:?}x{k} -> {n}, {name} weight");
            assert_close(&what, &fetch(&got), &want, tol);
            let want = x.linear(&w, None).unwrap().to_f32_vec().unwrap();
            let got = on(dev, &x).linear(&wd, None).unwrap();
            assert_close(&format!("{what}, no bias"), &fetch(&got), &want, tol);
        }
    }
    let x = on(dev, &host(&[2, 8], 1, 1.0));
    let w = Weight::new(host(&[4, 8], 2, 1.0).to_device(dev).unwrap());
    let e = x.linear_f32(&w, None).unwrap_err();
    assert!(matches!(e, Error::Device(_)), "{e}");
}

#[test]
fn linear_fp8_matches_its_emulation() {
    let Some(dev) = gpu("linear_fp8_matches_its_emulation") else {
        return;
    };
    let cc = capability(dev);
    // (rows, in, out): DiT-like and odd row counts; sizes are multiples of 16 (the fp8 path).
    for (i, &(rows, k, n)) in [(1, 16, 16), (37, 64, 48), (130, 1536, 96)]
        .iter()
        .enumerate()
    {
        if gemm_path(cc, DType::F8E4M3, n, k) != GemmPath::Fp8E4m3 {
            println!(
                "linear_fp8_matches_its_emulation: SKIP: sm_{}{} has no fp8 GEMM",
                cc.0, cc.1
            );
            return;
        }
        let seed = 700 + 10 * i as u32;
        let x = host(&[rows, k], seed, 3.0);
        let w = host(&[n, k], seed + 1, 0.1)
            .to_dtype(DType::F8E4M3)
            .unwrap();
        let b = host(&[n], seed + 2, 0.5);
        let scale = 0.37;
        let d = LinearDims { rows, k, n };
        let xs = x.to_f32_vec().unwrap();
        let codes = w.raw_bytes().unwrap().to_vec();
        let bias = b.to_dtype(DType::BF16).unwrap().to_f32_vec().unwrap();
        let want = gemm_plan::linear_fp8(
            &xs,
            &codes,
            scale,
            Some(&bias),
            d,
            ActivationScaling::PerTensor,
        );
        let wd = Weight {
            tensor: w.to_device(dev).unwrap(),
            scale: Some(scale),
        };
        let bd = Weight::new(b.to_device(dev).unwrap());
        poison(dev, rows * n * 2);
        let got = fetch(&on(dev, &x).linear(&wd, Some(&bd)).unwrap());
        // Only the f32 summation order differs: a bf16 rounding step at most, here and there.
        assert_close(&format!("fp8 linear {rows}x{k} -> {n}"), &got, &want, 5e-3);
        // GELU (tanh) fused into the same GEMM.
        let want: Vec<f32> = want.iter().map(|&v| gelu_tanh(v)).collect();
        let got = fetch(&on(dev, &x).linear_gelu_tanh(&wd, Some(&bd)).unwrap());
        assert_close(
            &format!("fp8 linear+gelu {rows}x{k} -> {n}"),
            &got,
            &want,
            1e-2,
        );
    }
}

/// GELU, tanh form, in f64.
fn gelu_tanh(v: f32) -> f32 {
    let x = f64::from(v);
    let c = (2.0 / std::f64::consts::PI).sqrt();
    (0.5 * x * (1.0 + (c * (x + 0.044715 * x.powi(3))).tanh())) as f32
}

#[test]
fn linear_gelu_tanh_matches_the_cpu() {
    let Some(dev) = gpu("linear_gelu_tanh_matches_the_cpu") else {
        return;
    };
    for (i, &(rows, k, n)) in [(5, 24, 40), (64, 1536, 130)].iter().enumerate() {
        let seed = 800 + 10 * i as u32;
        let x = host(&[rows, k], seed, 1.0);
        let w = Weight::new(host(&[n, k], seed + 1, 0.1).to_dtype(DType::BF16).unwrap());
        let b = Weight::new(host(&[n], seed + 2, 0.5));
        let want = x
            .linear_gelu_tanh(&w, Some(&b))
            .unwrap()
            .to_f32_vec()
            .unwrap();
        let wd = Weight::new(w.tensor.to_device(dev).unwrap());
        let bd = Weight::new(b.tensor.to_device(dev).unwrap());
        poison(dev, rows * n * 2);
        let got = fetch(&on(dev, &x).linear_gelu_tanh(&wd, Some(&bd)).unwrap());
        assert_close(
            &format!("linear+gelu {rows}x{k} -> {n}"),
            &got,
            &want,
            BF16_TOL,
        );
    }
}

#[test]
fn staged_uploads_round_trip() {
    let Some(dev) = gpu("staged_uploads_round_trip") else {
        return;
    };
    // Several chunks through both pinned buffers, a partial last one, and a tiny upload.
    for n in [2 * STAGING_BUFFER_BYTES + STAGING_BUFFER_BYTES / 3 + 7, 5] {
        let bytes: Vec<u8> = (0..n).map(|i| (i * 31 + i / 4099) as u8).collect();
        let t = Tensor::from_bytes(bytes.clone(), DType::U8, [n]).unwrap();
        let back = t.to_device(dev).unwrap().to_device(Device::Cpu).unwrap();
        assert!(back.raw_bytes().unwrap() == bytes.as_slice(), "{n} bytes");
    }
}

/// `w` as a bf16 weight on `dev` (the CPU reference takes the same values in f32).
fn weight_on(dev: Device, w: &Tensor) -> Weight {
    Weight::new(on(dev, w))
}

#[test]
fn conv3d_matches_the_cpu_on_vae_shapes_and_odd_sizes() {
    let Some(dev) = gpu("conv3d_matches_the_cpu_on_vae_shapes_and_odd_sizes") else {
        return;
    };
    // (input [B, Cin, T, H, W], weight [Cout, Cin, kt, kh, kw], stride, padding)
    type ConvCase = ([usize; 5], [usize; 5], [usize; 3], [usize; 3]);
    let cases: [ConvCase; 8] = [
        // A residual block's causal conv (time padded by the caller), 3×3×3.
        ([1, 32, 3, 9, 11], [32, 32, 3, 3, 3], [1; 3], [0, 1, 1]),
        // Odd everything: Cin 5, Cout 67 (past one 64-row tile), 7×13 frames.
        ([2, 5, 4, 7, 13], [67, 5, 3, 3, 3], [1; 3], [0, 1, 1]),
        // 1×1×1 shortcut / qkv, 65 positions.
        ([1, 48, 1, 5, 13], [96, 48, 1, 1, 1], [1; 3], [0; 3]),
        // The spatial downsampling conv: stride 2, no padding.
        ([1, 16, 2, 9, 9], [16, 16, 1, 3, 3], [1, 2, 2], [0; 3]),
        // The temporal downsampling conv: kernel (3, 1, 1), stride 2 in time.
        ([1, 24, 5, 6, 7], [24, 24, 3, 1, 1], [2, 1, 1], [0; 3]),
        // The head: 3 output channels.
        ([1, 40, 3, 16, 16], [3, 40, 3, 3, 3], [1; 3], [0, 1, 1]),
        // A single output position.
        ([1, 3, 1, 1, 1], [1, 3, 1, 1, 1], [1; 3], [0; 3]),
        // Depth 130·27 (many K steps, a partial last one).
        ([1, 130, 3, 4, 5], [130, 130, 3, 3, 3], [1; 3], [0, 1, 1]),
    ];
    for (i, &(xd, wd, stride, padding)) in cases.iter().enumerate() {
        let seed = 800 + 10 * i as u32;
        let x = host(&xd, seed, 1.0);
        let fan_in = (wd[1] * wd[2] * wd[3] * wd[4]) as f32;
        let w = host(&wd, seed + 1, 1.0 / fan_in.sqrt());
        let b = host(&[wd[0]], seed + 2, 0.5);
        for with_bias in [true, false] {
            let (wc, bc) = (Weight::new(w.clone()), Weight::new(b.clone()));
            let want = x
                .conv3d(&wc, with_bias.then_some(&bc), stride, padding)
                .unwrap();
            let (wg, bg) = (weight_on(dev, &w), weight_on(dev, &b));
            poison(dev, want.elem_count() * 2);
            let got = on(dev, &x)
                .conv3d(&wg, with_bias.then_some(&bg), stride, padding)
                .unwrap();
            assert_eq!((got.dims(), got.dtype()), (want.dims(), DType::BF16));
            assert_close(
                &format!("conv3d case {i} {xd:?} * {wd:?} bias={with_bias}"),
                &fetch(&got),
                &want.to_f32_vec().unwrap(),
                BF16_TOL,
            );
        }
    }
}

#[test]
fn channel_rms_norm_and_upsample_match_the_cpu() {
    let Some(dev) = gpu("channel_rms_norm_and_upsample_match_the_cpu") else {
        return;
    };
    for (i, dims) in [
        &[1, 1, 1][..],
        &[1, 3, 2, 5, 7],
        &[2, 96, 1, 9, 13],
        &[1, 384, 1, 4, 4],
    ]
    .into_iter()
    .enumerate()
    {
        let seed = 900 + 10 * i as u32;
        let x = host(dims, seed, 2.0);
        let gamma = host(&[dims[1]], seed + 1, 1.0);
        let want = x
            .channel_rms_norm(&Weight::new(gamma.clone()))
            .unwrap()
            .to_f32_vec()
            .unwrap();
        poison(dev, x.elem_count() * 2);
        // gamma stored as [C, 1, 1] in f32, as the checkpoints hold it.
        let g = Weight::new(
            gamma
                .reshape([dims[1], 1, 1])
                .unwrap()
                .to_device(dev)
                .unwrap(),
        );
        let got = on(dev, &x).channel_rms_norm(&g).unwrap();
        assert_close(
            &format!("channel_rms_norm {dims:?}"),
            &fetch(&got),
            &want,
            BF16_TOL,
        );
        let want = x.upsample_nearest2x().unwrap();
        poison(dev, want.elem_count() * 2);
        let got = on(dev, &x).upsample_nearest2x().unwrap();
        assert_eq!(got.dims(), want.dims());
        // A copy of bf16 values: exact.
        assert_eq!(fetch(&got), want.to_f32_vec().unwrap(), "upsample {dims:?}");
    }
}

#[test]
fn embedding_matches_the_cpu_exactly_and_refuses_bad_ids() {
    let Some(dev) = gpu("embedding_matches_the_cpu_exactly_and_refuses_bad_ids") else {
        return;
    };
    // (vocab, width, ids): a T5-like row of 8k-aligned width, the position table's narrow rows.
    let cases: [(usize, usize, &[u32]); 3] = [
        (50, 64, &[0, 49, 7, 7, 3]),
        (32, 3, &[31, 0, 16, 16, 1, 2, 30]),
        (9, 13, &[8]),
    ];
    for (i, &(vocab, d, ids)) in cases.iter().enumerate() {
        let table = host(&[vocab, d], 1000 + i as u32, 1.0);
        let want = embedding(ids, &Weight::new(table.clone())).unwrap();
        poison(dev, want.elem_count() * 2);
        for stored in [DType::BF16, DType::F32] {
            let t = Weight::new(table.to_dtype(stored).unwrap().to_device(dev).unwrap());
            let got = embedding(ids, &t).unwrap();
            assert_eq!(got.dims(), [ids.len(), d]);
            assert_eq!(
                fetch(&got),
                want.to_f32_vec().unwrap(),
                "embedding case {i} {stored:?}"
            );
        }
    }
    let t = weight_on(dev, &host(&[4, 8], 1, 1.0));
    assert!(matches!(
        embedding(&[4], &t),
        Err(Error::InvalidArgument(_))
    ));
}
