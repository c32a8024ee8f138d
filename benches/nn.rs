//! Benchmarks of the nn, elementwise and shape ops at DiT-like sizes.
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use wanrt::backend::cpu::elementwise::{unary, UnaryOp};
use wanrt::tensor::ops::cat;
use wanrt::Tensor;

fn filled(dims: &[usize]) -> Tensor {
    let n: usize = dims.iter().product();
    Tensor::from_f32(
        (0..n)
            .map(|i| ((i * 7919) % 1000) as f32 * 0.004 - 2.0)
            .collect(),
        dims,
    )
    .unwrap()
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

criterion_group!(benches, elementwise_benches);
criterion_main!(benches);
