//! The pipeline with its DiT on CUDA: the demo model generates there, the latent matching the
//! CPU run's at the bf16-compute tolerance, the metadata naming the device. Compiled in every
//! build; without a CUDA device the test prints why it skipped.

mod common;

use wanrt::model::dit::AttentionChoice;
use wanrt::pipeline::{Flow, GenerateRequest, Pipeline};

/// The CUDA backend computes in bf16 with f32 accumulation: the tolerance of the fixtures'
/// `rel_l2_bf16_compute` for one DiT forward (0.03); the latent moves less than a velocity.
const BF16_LATENT_TOLERANCE: f64 = 3e-2;

#[test]
fn the_demo_generates_on_cuda_like_on_the_cpu() {
    let Some(dev) = common::cuda_device("the_demo_generates_on_cuda_like_on_the_cpu") else {
        return;
    };
    let mut req = GenerateRequest::new("a red fox in the snow");
    (req.width, req.height, req.frames, req.steps, req.seed) = (32, 32, 5, 3, Some(11));
    // The exact attention on both (auto would pick the 8-bit kernel on the GPU).
    req.attention = AttentionChoice::Bf16;
    let cpu = Pipeline::demo(0).unwrap();
    let gpu = Pipeline::demo(0).unwrap().to_device(dev).unwrap();
    assert_eq!(gpu.device(), dev);
    let run = |p: &Pipeline| p.generate(&req, &mut |_| Flow::Continue).unwrap();
    let (a, b) = (run(&cpu), run(&gpu));
    assert_eq!(b.metadata(gpu.info())["device"], dev.to_string());
    assert_eq!(
        b.latent.device(),
        wanrt::backend::Device::Cpu,
        "the latent comes back"
    );
    assert_eq!(b.frames.len(), a.frames.len());
    let err = common::rel_l2_tensors(&b.latent, &a.latent);
    println!("demo latent, CUDA against CPU: rel_l2 {err:.2e}");
    assert!(err < BF16_LATENT_TOLERANCE, "rel_l2 {err}");
}
