//! GPU tests of the sm_90a 8-bit attention (`kernels/attention_q8_sm90.cu`: wgmma, TMA, warp
//! specialisation) against its CPU emulation (`Q8Path::Sm90` of
//! [`crate::backend::cpu::attention_q8`]) and against the mma.sync kernel, on random and
//! Wan-shaped inputs of many lengths (1, 63, 127, 129, 1000, 3120: lengths no 128-row tile
//! divides). They print a skip reason and pass without a CUDA device or on one that is not sm_90.

use std::sync::Arc;

use cudarc::driver::CudaStream;

use super::tests::{assert_close, attention_inputs, gpu, rel_l2, widen, BF16_REL};
use super::tests_attention_q8::run;
use super::Kernels;
use crate::backend::cpu::attention::AttnDims;
use crate::backend::cpu::attention_q8::{attention_q8, Q8Path, Q8Scheme};

/// [`gpu`], but `None` (with the reason printed) unless the device is sm_90.
fn sm90(test: &str) -> Option<(Arc<CudaStream>, Kernels)> {
    let (stream, k) = gpu(test)?;
    match stream.context().compute_capability() {
        Ok((9, 0)) => Some((stream, k)),
        Ok(cc) => {
            println!("{test}: SKIP: compute capability {cc:?}, the wgmma kernel needs 9.0");
            None
        }
        Err(e) => {
            println!("{test}: SKIP: the compute capability could not be read: {e}");
            None
        }
    }
}

#[test]
fn gpu_attention_q8_sm90_matches_its_emulation_and_the_mma_kernel() {
    let test = "gpu_attention_q8_sm90_matches_its_emulation_and_the_mma_kernel";
    let Some((stream, k)) = sm90(test) else {
        return;
    };
    // (batch, q_len, kv_len, heads), head_dim 128.
    let shapes = [
        (1, 1, 1, 1),
        (1, 63, 63, 2),
        (1, 127, 129, 2),
        (1, 129, 127, 1),
        (1, 255, 1, 1),
        (1, 1, 257, 2),
        (2, 1000, 1003, 3),
        (1, 3120, 3120, 2),
    ];
    let scheme = Q8Scheme::for_path(Q8Path::Sm90);
    for (seed, &(batch, q_len, kv_len, heads)) in shapes.iter().enumerate() {
        let dims = AttnDims {
            batch,
            q_len,
            kv_len,
            heads,
            head_dim: 128,
        };
        for wan in [false, true] {
            let seed = 1000 + seed as u32 * 8 + wan as u32 * 4;
            let inp = attention_inputs(dims, seed, wan);
            let scale = 1.0 / 128f32.sqrt();
            let got = run(&stream, &k, &inp, dims, scale, Q8Path::Sm90);
            let [q, kk, v] = inp.clone().map(|x| widen(&x));
            let mut emulated = vec![f32::NAN; got.len()];
            attention_q8(&q, &kk, &v, dims, scale, &scheme, &mut emulated).unwrap();
            // The same quantization and roundings: the f32 summation order (inside the wgmma and
            // of the row sums), exp2f against std's exp2 (a flipped f16 rounding of P at most)
            // and the bf16 output remain.
            let what = format!("attention_q8 sm90 {dims:?} wan={wan}");
            assert_near(&format!("{what} vs emulation"), &got, &emulated);
            // The mma.sync kernel: the same scheme with 64-key tiles (P's f16 rounding moves
            // with the running maximum) on the same pre-pass.
            let mma = run(&stream, &k, &inp, dims, scale, Q8Path::Sm80);
            assert_near(&format!("{what} vs the mma.sync kernel"), &got, &mma);
        }
    }
}

/// `got` within two bf16 steps (plus 2e-3) of `want` everywhere and within 4e-3 in relative L2.
fn assert_near(what: &str, got: &[f32], want: &[f32]) {
    assert_close(what, got, want, 2.0 * BF16_REL, 2e-3);
    let rel = rel_l2(got, want);
    assert!(rel < 4e-3, "{what}: rel_l2 {rel:.3e}");
}

#[test]
fn gpu_attention_q8_sm90_edges() {
    let Some((stream, k)) = sm90("gpu_attention_q8_sm90_edges") else {
        return;
    };
    // No keys: zeros, every value written (the launcher clears the output, no tile runs).
    let dims = AttnDims {
        batch: 1,
        q_len: 130,
        kv_len: 0,
        heads: 2,
        head_dim: 128,
    };
    let got = run(
        &stream,
        &k,
        &attention_inputs(dims, 1, false),
        dims,
        0.1,
        Q8Path::Sm90,
    );
    assert!(got.iter().all(|&x| x == 0.0));
    // One key: every row is that key's value (to bf16), whatever the queries.
    let one = AttnDims { kv_len: 1, ..dims };
    let inp = attention_inputs(one, 2, true);
    let got = run(&stream, &k, &inp, one, 0.1, Q8Path::Sm90);
    let v = widen(&inp[2]);
    for row in got.chunks(one.heads * 128) {
        assert_close("one key", row, &v, 2.0 * BF16_REL, 1e-3);
    }
}
