//! Attention at the Wan2.1 1.3B shapes, f32 products against bf16 products (the two compute
//! modes, `WANRT_COMPUTE`) in one run: self-attention over 3744 tokens and cross-attention to
//! 512 text tokens (12 heads of 128), and the T5 encoder's self-attention with its position bias
//! (144 tokens, 64 heads of 64). Throughput is reported in FLOP/s (criterion's "elem/s",
//! counting the two GEMMs: 4·Sq·Sk·D per head); `WANRT_BENCH_TOKENS` overrides the video token
//! count.
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use wanrt::backend::cpu::attention::{attention, attention_bf16, AttnDims, AttnOpts};
use wanrt::error::Result;
use wanrt::tensor::random::values;

/// [`attention`] or [`attention_bf16`].
type AttnFn = fn(&[f32], &[f32], &[f32], AttnDims, &AttnOpts<'_>, &mut [f32]) -> Result<()>;

fn bench(c: &mut Criterion) {
    let tokens = std::env::var("WANRT_BENCH_TOKENS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3744);
    let mut group = c.benchmark_group("attention");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    let t5_bias = values(64 * 144 * 144, 4);
    let shapes = [
        ("self", tokens, tokens, 12, 128, None),
        ("cross", tokens, 512, 12, 128, None),
        ("t5", 144, 144, 64, 64, Some(t5_bias.as_slice())),
    ];
    for (name, q_len, kv_len, heads, d, bias) in shapes {
        let dims = AttnDims {
            batch: 1,
            q_len,
            kv_len,
            heads,
            head_dim: d,
        };
        let q = values(q_len * heads * d, 1);
        let (k, v) = (values(kv_len * heads * d, 2), values(kv_len * heads * d, 3));
        let opts = AttnOpts {
            scale: 1.0 / (d as f32).sqrt(),
            kv_lens: None,
            bias,
            bias_per_batch: false,
        };
        let mut out = vec![0.0; q.len()];
        group.throughput(Throughput::Elements(
            (4 * q_len * kv_len * d * heads) as u64,
        ));
        let modes: [(&str, AttnFn); 2] = [("f32", attention), ("bf16", attention_bf16)];
        for (mode, f) in modes {
            let id = format!("{name} {q_len}x{kv_len} h{heads} d{d} {mode}");
            group.bench_function(id, |b| {
                b.iter(|| f(&q, &k, &v, dims, &opts, &mut out).unwrap())
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
