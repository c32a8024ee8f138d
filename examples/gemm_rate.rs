//! Prints the f32 (gemm crate) and bf16 (`vdpbf16ps`) GEMM rates at the Wan 1.3B linear shapes,
//! measured in one run: `cargo run --release --example gemm_rate [tokens] [threads]`.
use std::time::Instant;

use wanrt::backend::cpu::gemm::{sgemm, MatRef};
use wanrt::backend::cpu::gemm_bf16::{bgemm, has_bf16_dot};
use wanrt::tensor::random::values;

fn main() {
    let mut args = std::env::args().skip(1);
    let m: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(3744);
    let threads: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(2);
    println!("AVX512-BF16: {}, {threads} threads", has_bf16_dot());
    for (k, n) in [(1536, 1536), (1536, 8960), (8960, 1536)] {
        let a = values(m * k, 1);
        let w = values(n * k, 2);
        let (av, bv) = (MatRef::row_major(&a, m, k), MatRef::row_major(&w, n, k).t());
        let mut c = vec![0f32; m * n];
        let flops = 2.0 * (m * k * n) as f64;
        let rate = |f: &mut dyn FnMut()| {
            f();
            let t = Instant::now();
            let reps = 3;
            for _ in 0..reps {
                f();
            }
            flops * reps as f64 / t.elapsed().as_secs_f64() / 1e9
        };
        let s = rate(&mut || sgemm(av, bv, &mut c, false, threads));
        let b = rate(&mut || bgemm(av, bv, &mut c, false, threads));
        println!(
            "{m}x{k}->{n}: f32 {s:.0} GFLOP/s, bf16 {b:.0} GFLOP/s, ratio {:.2}",
            b / s
        );
    }
}
