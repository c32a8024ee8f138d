//! The VAE and UMT5 fixtures at bf16 compute on the CPU's emulation, in their own test binary
//! because the CPU's bf16 emulation (`WANRT_COMPUTE=bf16`) is read once per process.
//!
//! The `vae_decode`, `vae_encode` and `t5_encode` cases state no `rel_l2_bf16_compute`, so
//! [`BF16_BOUND`], the DiT cases' bound, is the bound of the bf16 path for them
//! (`tests/kinds/bf16.rs`). The CPU emulation (bf16 at the inputs, weights, bias and output of
//! every conv, linear and attention: the rounding points of the CUDA kernels) must land within
//! it and measurably off the f32 tolerance. The same cases on CUDA are in
//! `tests/cuda_pipeline.rs`.

mod common;
#[allow(dead_code)]
mod kinds;

use wanrt::backend::cpu::compute::{compute_dtype, COMPUTE_VAR};
use wanrt::backend::Device;
use wanrt::DType;

use kinds::bf16::{load, worst, BF16_BOUND, VAE_T5_CASES};

#[test]
fn vae_and_t5_fixtures_at_bf16_compute_on_the_cpu_emulation() {
    // The only test of this binary, so no op has read the mode before this line.
    std::env::set_var(COMPUTE_VAR, "bf16");
    assert_eq!(compute_dtype().unwrap(), DType::BF16);
    for case in &load(&VAE_T5_CASES) {
        let err = worst(case, Device::Cpu);
        let f32_tol = case.rel_l2_tolerance().unwrap();
        println!(
            "{}: bf16-compute emulation rel_l2={err:.3e} bound={BF16_BOUND:e}",
            case.name
        );
        assert!(err <= BF16_BOUND && err > f32_tol, "{}: {err:e}", case.name);
    }
}
