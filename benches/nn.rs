//! Benchmarks of the nn ops (the VAE's convolutions, the DiT's norms and RoPE) and of the
//! elementwise and shape ops.
//!
//! `cargo bench --bench nn`. Conv throughput is reported in FLOP ("elements") per second.
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use wanrt::backend::cpu::elementwise::{unary, UnaryOp};
use wanrt::tensor::ops::cat;
use wanrt::tensor::{DType, Tensor, Weight};

fn filled(dims: &[usize]) -> Tensor {
    let n: usize = dims.iter().product();
    let v = (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    Tensor::from_f32(v, dims).unwrap()
}

fn weight(dims: &[usize], dtype: DType) -> Weight {
    Weight::new(filled(dims).to_dtype(dtype).unwrap())
}

/// A conv benchmark: name, input dims, weight dims, stride, padding.
type ConvCase = (&'static str, [usize; 5], [usize; 5], [usize; 3], [usize; 3]);

fn nn_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("conv3d");
    g.sample_size(10);
    // (name, input, weight, stride, padding): VAE decoder convs, the VAE shortcut and the DiT
    // patch embedding of the 1.3B model at 480x832 (latent 21x60x104).
    let convs: [ConvCase; 4] = [
        (
            "96x96_k3_3x64x64",
            [1, 96, 3, 64, 64],
            [96, 96, 3, 3, 3],
            [1; 3],
            [1; 3],
        ),
        (
            "384x384_k3_3x16x16",
            [1, 384, 3, 16, 16],
            [384, 384, 3, 3, 3],
            [1; 3],
            [1; 3],
        ),
        (
            "192x384_k1_3x32x32",
            [1, 192, 3, 32, 32],
            [384, 192, 1, 1, 1],
            [1; 3],
            [0; 3],
        ),
        (
            "patch16x1536_k122_21x60x104",
            [1, 16, 21, 60, 104],
            [1536, 16, 1, 2, 2],
            [1, 2, 2],
            [0; 3],
        ),
    ];
    for (name, xd, wd, stride, padding) in convs {
        let x = filled(&xd);
        let w = weight(&wd, DType::BF16);
        let b = weight(&wd[..1], DType::BF16);
        let out = x.conv3d(&w, Some(&b), stride, padding).unwrap();
        let flops = 2 * out.elem_count() * wd[1..].iter().product::<usize>();
        g.throughput(Throughput::Elements(flops as u64));
        g.bench_function(name, |bch| {
            bch.iter(|| black_box(x.conv3d(&w, Some(&b), stride, padding).unwrap()))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("norm");
    g.sample_size(20);
    for (rows, dim) in [(4096, 1536), (1024, 5120)] {
        let x = filled(&[rows, dim]);
        let w = weight(&[dim], DType::F32);
        g.throughput(Throughput::Bytes((rows * dim * 8) as u64));
        g.bench_function(format!("layer_norm_{rows}x{dim}"), |bch| {
            bch.iter(|| black_box(x.layer_norm(Some(&w), Some(&w), 1e-6).unwrap()))
        });
        g.bench_function(format!("rms_norm_{rows}x{dim}"), |bch| {
            bch.iter(|| black_box(x.rms_norm(Some(&w), 1e-6).unwrap()))
        });
    }
    let x = filled(&[1, 96, 3, 64, 64]);
    let gamma = weight(&[96, 1, 1, 1], DType::F32);
    g.throughput(Throughput::Bytes((x.elem_count() * 8) as u64));
    g.bench_function("channel_rms_norm_96x3x64x64", |bch| {
        bch.iter(|| black_box(x.channel_rms_norm(&gamma).unwrap()))
    });
    let (s, h, d) = (4096, 12, 128);
    let x = filled(&[1, s, h, d]);
    let cs = filled(&[s, d / 2]);
    g.throughput(Throughput::Bytes((x.elem_count() * 8) as u64));
    g.bench_function("rope_4096x12x128", |bch| {
        bch.iter(|| black_box(x.rope_interleaved(&cs, &cs).unwrap()))
    });
    g.finish();
}

/// Elementwise and shape ops on `[2048, 1536]` activations (a DiT block's token × dim at a small
/// resolution), the FFN hidden width for the activations, and typical layout changes.
fn elementwise_benches(c: &mut Criterion) {
    let (s, d, h) = (2048, 1536, 12);
    let x = filled(&[s, d]);
    let y = filled(&[s, d]);
    let bias = filled(&[d]);
    let row = filled(&[s, 1]);
    let ffn = filled(&[s / 4, 8960]);

    let mut g = c.benchmark_group("elementwise");
    g.sample_size(20);
    g.throughput(Throughput::Elements((s * d) as u64));
    g.bench_function("add_same_shape", |b| {
        b.iter(|| black_box(x.add(&y).unwrap()))
    });
    g.bench_function("add_bias_broadcast", |b| {
        b.iter(|| black_box(x.add(&bias).unwrap()))
    });
    g.bench_function("mul_per_row", |b| {
        b.iter(|| black_box(x.mul(&row).unwrap()))
    });
    g.bench_function("silu", |b| b.iter(|| black_box(x.silu().unwrap())));
    g.bench_function("exp", |b| b.iter(|| black_box(x.exp().unwrap())));
    g.bench_function("sum_last", |b| {
        b.iter(|| black_box(x.sum_keepdim(1).unwrap()))
    });
    g.bench_function("sum_first", |b| {
        b.iter(|| black_box(x.sum_keepdim(0).unwrap()))
    });
    g.bench_function("softmax_last", |b| {
        b.iter(|| black_box(x.softmax_last().unwrap()))
    });
    g.throughput(Throughput::Elements(ffn.elem_count() as u64));
    g.bench_function("gelu_tanh_ffn", |b| {
        b.iter(|| black_box(ffn.gelu_tanh().unwrap()))
    });
    g.bench_function("gelu_erf_ffn", |b| {
        b.iter(|| black_box(ffn.gelu_erf().unwrap()))
    });
    g.finish();

    // The same kernels on cache-resident data: their arithmetic cost without memory traffic.
    let small: Vec<f32> = x.f32_data().unwrap()[..8192].to_vec();
    let mut out = vec![0.0; small.len()];
    let mut g = c.benchmark_group("unary_in_cache");
    g.throughput(Throughput::Elements(small.len() as u64));
    for (name, op) in [
        ("silu", UnaryOp::Silu),
        ("gelu_tanh", UnaryOp::GeluTanh),
        ("gelu_erf", UnaryOp::GeluErf),
        ("tanh", UnaryOp::Tanh),
        ("exp", UnaryOp::Exp),
        ("affine", UnaryOp::Affine { mul: 0.5, add: 1.0 }),
    ] {
        g.bench_function(name, |b| b.iter(|| unary(op, black_box(&small), &mut out)));
    }
    g.finish();

    let heads = x.reshape([1, s, h, d / h]).unwrap();
    let mut g = c.benchmark_group("shape");
    g.sample_size(20);
    g.throughput(Throughput::Bytes((s * d * 4) as u64));
    g.bench_function("heads_bshd_to_bhsd", |b| {
        b.iter(|| black_box(heads.permute(&[0, 2, 1, 3]).unwrap()))
    });
    g.bench_function("transpose_2d", |b| {
        b.iter(|| black_box(x.transpose(0, 1).unwrap()))
    });
    g.bench_function("cat_last", |b| {
        b.iter(|| black_box(cat(&[&x, &y], 1).unwrap()))
    });
    g.bench_function("narrow_inner", |b| {
        b.iter(|| black_box(x.narrow(1, 256, 1024).unwrap()))
    });
    g.bench_function("pad_middle", |b| {
        b.iter(|| black_box(heads.pad_zeros(&[(0, 0), (2, 0), (0, 0), (0, 0)]).unwrap()))
    });
    g.finish();
}

criterion_group!(benches, nn_benches, elementwise_benches);
criterion_main!(benches);
