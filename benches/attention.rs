//! Attention at the Wan2.1 1.3B shapes: 3744 tokens, 12 heads of 128; self-attention and
//! cross-attention to 512 text tokens. Throughput is reported in FLOP/s (criterion's "elem/s",
//! counting the two GEMMs: 4·Sq·Sk·D per head); `WANRT_BENCH_TOKENS` overrides the token count.
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use wanrt::tensor::ops::{attention, AttentionParams};
use wanrt::tensor::random::values;
use wanrt::Tensor;

fn bench(c: &mut Criterion) {
    let tokens = std::env::var("WANRT_BENCH_TOKENS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3744);
    let (heads, d) = (12, 128);
    let mut group = c.benchmark_group("attention");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    let q = Tensor::from_f32(values(tokens * heads * d, 1), [1, tokens, heads, d]).unwrap();
    let params = AttentionParams {
        scale: 1.0 / (d as f32).sqrt(),
        kv_lens: None,
        bias: None,
    };
    for (name, kv_len) in [("self", tokens), ("cross", 512)] {
        let k = Tensor::from_f32(values(kv_len * heads * d, 2), [1, kv_len, heads, d]).unwrap();
        let v = Tensor::from_f32(values(kv_len * heads * d, 3), [1, kv_len, heads, d]).unwrap();
        group.throughput(Throughput::Elements(
            (4 * tokens * kv_len * d * heads) as u64,
        ));
        group.bench_function(format!("{name} {tokens}x{kv_len} h{heads} d{d}"), |b| {
            b.iter(|| attention(&q, &k, &v, &params).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
