//! musubi cache folders for the training tests, written as `wanrt::train::cache` reads them.

use std::collections::BTreeMap;
use std::path::Path;

use wanrt::io::safetensors::write_file;
use wanrt::tensor::random;
use wanrt::DType;

/// Writes two items for the tiny fixture DiT into `dir`: an image (`img`, latent
/// `[16, 1, 4, 4]`) and a video window (`clip`, latent `[16, 2, 4, 4]`), each with its text
/// cache (`[L, 32]`), all bf16 with `architecture` `wan`.
pub fn write_caches(dir: &Path) {
    let meta = BTreeMap::from([("architecture".to_string(), "wan".to_string())]);
    let bf16 = |dims: &[usize], seed: u32| {
        random::tensor(dims, seed, 0.0, 1.0)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap()
    };
    for (i, (latent, key, frames, stem)) in [
        (
            "img_0032x0032_wan.safetensors",
            "latents_1x4x4_bfloat16",
            1,
            "img",
        ),
        (
            "clip_00000-005_0032x0032_wan.safetensors",
            "latents_2x4x4_bfloat16",
            2,
            "clip",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let seed = 2 * i as u32 + 1;
        write_file(
            &dir.join(latent),
            &[(key, &bf16(&[16, frames, 4, 4], seed))],
            &meta,
        )
        .unwrap();
        write_file(
            &dir.join(format!("{stem}_wan_te.safetensors")),
            &[("varlen_t5_bfloat16", &bf16(&[5 + i, 32], seed + 1))],
            &meta,
        )
        .unwrap();
    }
}
