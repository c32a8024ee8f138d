//! Cases held to the bf16-compute bound that state none of their own (`vae_decode`,
//! `vae_encode`, `t5_encode`, `pipeline` and `sampler` cases), and running them on a device.
// The fixture harness includes the kinds without using this module.
#![allow(dead_code)]

use wanrt::backend::Device;

use super::{pipeline, sampler, t5, vae, Check, Stop};
use crate::common::{fixtures_root, Case};

/// The bf16-compute bound for these cases (the `rel_l2_bf16_compute` of the DiT cases).
pub const BF16_BOUND: f64 = 3e-2;

/// The VAE and UMT5 cases.
pub const VAE_T5_CASES: [&str; 4] = [
    "vae_decode_f32",
    "vae_decode_bf16_pth",
    "vae_encode_f32",
    "t5_encode_f32",
];

/// The cases of `names` found under the fixtures, printing a skip line for each missing one.
pub fn load(names: &[&str]) -> Vec<Case> {
    names
        .iter()
        .filter_map(|name| {
            let dir = fixtures_root().join("cases").join(name);
            let case = Case::load(&dir);
            if case.is_err() {
                println!("SKIP {name}: no fixture at {}", dir.display());
            }
            case.ok()
        })
        .collect()
}

/// Runs `case` on `device` and returns its worst rel_l2; a failure to run panics with the
/// case's name.
pub fn worst(case: &Case, device: Device) -> f64 {
    let checks: Result<Vec<Check>, Stop> = match case.kind.as_str() {
        "t5_encode" => t5::encode(case, device),
        "pipeline" => pipeline::run_on(case, device),
        "sampler" => sampler::run_on(case, device),
        _ => vae::run_on(case, device),
    };
    match checks {
        Ok(c) => c.iter().map(|c| c.rel_l2).fold(0.0, f64::max),
        Err(Stop::Skip(why) | Stop::Fail(why)) => panic!("{}: {why}", case.name),
    }
}
