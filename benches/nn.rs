//! Benchmarks of the nn ops: the VAE's convolutions and the DiT's norms and RoPE.
//!
//! `cargo bench --bench nn`. Conv throughput is reported in FLOP ("elements") per second.
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
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

criterion_group!(benches, nn_benches);
criterion_main!(benches);
