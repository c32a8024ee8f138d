//! Linear layers at the Wan2.1 1.3B shapes: 3744 tokens (480x832x17 frames after patching),
//! dim 1536, FFN 8960, with f32, bf16 and fp8 weights. Throughput is reported in FLOP/s
//! (criterion's "elem/s"); `WANRT_BENCH_TOKENS` overrides the token count.
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use wanrt::tensor::random::values;
use wanrt::tensor::Weight;
use wanrt::{DType, Tensor};

fn linear(c: &mut Criterion) {
    let tokens = std::env::var("WANRT_BENCH_TOKENS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3744);
    let x = Tensor::from_f32(values(tokens * 8960, 1), [tokens, 8960]).unwrap();
    let mut group = c.benchmark_group("linear");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    for (n_in, n_out) in [(1536, 1536), (1536, 8960), (8960, 1536)] {
        let x = x.narrow_rows(n_in);
        let w32 = Tensor::from_f32(values(n_out * n_in, 2), [n_out, n_in]).unwrap();
        let bias = Weight::new(Tensor::from_f32(values(n_out, 3), [n_out]).unwrap());
        group.throughput(Throughput::Elements((2 * tokens * n_in * n_out) as u64));
        for dtype in [DType::F32, DType::BF16, DType::F8E4M3] {
            let w = Weight::new(w32.to_dtype(dtype).unwrap());
            let name = format!("{tokens}x{n_in}->{n_out}/{dtype:?}");
            group.bench_function(name, |b| b.iter(|| x.linear(&w, Some(&bias)).unwrap()));
        }
    }
    group.finish();
}

/// The first `n` columns of every row, as a new `[rows, n]` tensor.
trait NarrowRows {
    fn narrow_rows(&self, n: usize) -> Tensor;
}

impl NarrowRows for Tensor {
    fn narrow_rows(&self, n: usize) -> Tensor {
        let [rows, cols] = self.dims() else {
            panic!("2-D")
        };
        let data = self.f32_data().unwrap();
        let v: Vec<f32> = data
            .chunks_exact(*cols)
            .flat_map(|r| &r[..n])
            .copied()
            .collect();
        Tensor::from_f32(v, [*rows, n]).unwrap()
    }
}

criterion_group!(benches, linear);
criterion_main!(benches);
