//! The sampler's CUDA kernels against the CPU ops, bit for bit: every fused solver step and
//! guidance combination on random f32 latents of odd sizes (fresh inputs per case, the device
//! cache filled with NaN buffers of the output's size first, so an unwritten value cannot
//! pass), the seeded noise, the non-finite check, and whole sampling runs with the latent
//! resident on the device. Compiled in every build; without a CUDA device every test prints why
//! it skipped.

use wanrt::backend::{cuda, Device};
use wanrt::sampler::{
    Flow, Guidance, Pass, PassRequest, Sampler, SamplerConfig, SolverKind, StepInfo, Stream,
    VelocityModel,
};
use wanrt::tensor::ops::sampler::{
    cfg, cfg_zero_star, dpm_step, euler_step, first_non_finite, lcm_step, seeded_normal,
    unipc_step, zeros_like, DpmSecondOrder, DpmStep, UniPcCorrector, UniPcHistory, UniPcPredictor,
    UniPcSecondOrder, UniPcStep,
};
use wanrt::tensor::{DType, Shape, Tensor};
use wanrt::Error;

/// The first CUDA device, or `None` after printing why there is none.
fn gpu(test: &str) -> Option<Device> {
    match cuda::list_devices() {
        Ok(d) if !d.is_empty() => Some(Device::Cuda(d[0].ordinal)),
        Ok(_) => {
            println!("{test}: SKIP: the CUDA driver reports no device");
            None
        }
        Err(e) => {
            assert!(
                matches!(e, Error::CudaNotCompiled | Error::Device(_)),
                "{e}"
            );
            println!("{test}: SKIP: no CUDA device: {e}");
            None
        }
    }
}

/// Sizes: tiny, odd, around a CFG-Zero* chunk (2^14) and several chunks with a tail.
const SIZES: [usize; 5] = [1, 37, 16_383, 16_385, 3 * 16_384 + 1001];

/// `n` standard normals of stream `seed` (host), times `scale`.
fn host(n: usize, seed: u64, scale: f32) -> Tensor {
    let x = seeded_normal(
        seed,
        Stream::Latent,
        &Shape::from([n]),
        DType::F32,
        Device::Cpu,
    )
    .unwrap();
    let v = x.f32_data().unwrap().iter().map(|v| v * scale).collect();
    Tensor::from_f32(v, [n]).unwrap()
}

/// Leaves NaN buffers of `n` f32 values in the device's cache.
fn poison(dev: Device, n: usize) {
    let nan = Tensor::from_f32(vec![f32::NAN; n], [n]).unwrap();
    let on_dev: Vec<Tensor> = (0..4).map(|_| nan.to_device(dev).unwrap()).collect();
    drop(on_dev);
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.to_device(Device::Cpu)
        .unwrap()
        .f32_data()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

/// Runs `op` on host tensors and on their device copies; asserts every output has equal bits.
fn same_bits(
    dev: Device,
    what: &str,
    inputs: &[Tensor],
    op: impl Fn(&[Tensor]) -> wanrt::Result<Vec<Tensor>>,
) {
    let n = inputs[0].elem_count();
    let want = op(inputs).unwrap();
    let on_dev: Vec<Tensor> = inputs.iter().map(|t| t.to_device(dev).unwrap()).collect();
    poison(dev, n);
    let got = op(&on_dev).unwrap();
    for (k, (w, g)) in want.iter().zip(&got).enumerate() {
        assert_eq!(g.device(), dev, "{what}: output {k} stays on the device");
        assert!(bits(w) == bits(g), "{what}: output {k}, n = {n}");
    }
}

#[test]
fn solver_kernels_match_the_cpu_bit_for_bit() {
    let Some(dev) = gpu("solver_kernels_match_the_cpu_bit_for_bit") else {
        return;
    };
    let corrector = |second: bool| UniPcCorrector {
        c_x: 0.913,
        c_m: 0.0731,
        c_d: 0.0712,
        second_order: second.then_some(UniPcSecondOrder {
            rho0: 0.52,
            rho1: 0.61,
            rk: -1.37,
        }),
    };
    let predictors = [
        UniPcPredictor::X0,
        UniPcPredictor::First {
            c_x: 0.87,
            c_m: 0.11,
        },
        UniPcPredictor::Second {
            c_x: 0.87,
            c_m: 0.11,
            c_d: 0.109,
            rk: -0.83,
        },
    ];
    for (case, &n) in SIZES.iter().enumerate() {
        let s = 10 * case as u64;
        let ins: Vec<Tensor> = (0..5).map(|k| host(n, s + k, 1.0 + k as f32)).collect();
        for corr in [None, Some(corrector(false)), Some(corrector(true))] {
            for predictor in predictors {
                let c = UniPcStep {
                    sigma: 0.8123,
                    corrector: corr,
                    predictor,
                };
                same_bits(dev, "unipc_step", &ins, |t| {
                    let history = Some(UniPcHistory {
                        last_sample: &t[2],
                        x0_prev: &t[3],
                        x0_prev2: Some(&t[4]),
                    });
                    let o = unipc_step(&t[0], &t[1], history, &c)?;
                    Ok(vec![o.sample, o.x0, o.start])
                });
            }
        }
        for second in [
            None,
            Some(DpmSecondOrder {
                c_half: 0.043,
                inv_r0: 1.71,
            }),
        ] {
            let c = DpmStep {
                sigma: 0.77,
                c_x: 0.9123,
                c_m: -0.086,
                second,
            };
            same_bits(dev, "dpm_step", &ins, |t| {
                let (a, b) = dpm_step(&t[0], &t[1], Some(&t[2]), &c)?;
                Ok(vec![a, b])
            });
        }
        same_bits(dev, "euler_step", &ins, |t| {
            Ok(vec![euler_step(&t[0], &t[1], -0.0713)?])
        });
        same_bits(dev, "lcm_step", &ins, |t| {
            Ok(vec![
                lcm_step(&t[0], &t[1], 0.75, Some((0.5, &t[2])))?,
                lcm_step(&t[0], &t[1], 0.25, None)?,
            ])
        });
    }
}

#[test]
fn guidance_kernels_match_the_cpu_bit_for_bit() {
    let Some(dev) = gpu("guidance_kernels_match_the_cpu_bit_for_bit") else {
        return;
    };
    for (case, &n) in SIZES.iter().enumerate() {
        let s = 100 + 10 * case as u64;
        let ins = [host(n, s, 1.0), host(n, s + 1, 0.8)];
        same_bits(dev, "cfg", &ins, |t| Ok(vec![cfg(&t[0], &t[1], 5.0)?]));
        // The reduction's scalar decides every output bit: it must equal the CPU's.
        same_bits(dev, "cfg_zero_star", &ins, |t| {
            Ok(vec![cfg_zero_star(&t[0], &t[1], 4.0)?])
        });
        same_bits(dev, "zeros_like", &ins, |t| Ok(vec![zeros_like(&t[0])?]));
    }
}

#[test]
fn device_noise_has_the_cpu_generators_bits() {
    let Some(dev) = gpu("device_noise_has_the_cpu_generators_bits") else {
        return;
    };
    for (seed, stream) in [
        (0u64, Stream::Latent),
        (42, Stream::Renoise { step: 3 }),
        (u64::MAX, Stream::Latent),
    ] {
        for n in [1usize, 6, 4099, 1 << 20] {
            let shape = Shape::from([n]);
            let cpu = seeded_normal(seed, stream, &shape, DType::F32, Device::Cpu).unwrap();
            poison(dev, n);
            let gpu = seeded_normal(seed, stream, &shape, DType::F32, dev).unwrap();
            assert_eq!(gpu.device(), dev);
            assert!(bits(&cpu) == bits(&gpu), "seed {seed} {stream:?} n {n}");
        }
    }
}

#[test]
fn the_non_finite_check_finds_the_first_bad_value() {
    let Some(dev) = gpu("the_non_finite_check_finds_the_first_bad_value") else {
        return;
    };
    let mut v = vec![1.0f32; 50_000];
    let clean = Tensor::from_f32(v.clone(), [v.len()]).unwrap();
    assert_eq!(
        first_non_finite(&clean.to_device(dev).unwrap()).unwrap(),
        None
    );
    v[40_000] = f32::NAN;
    v[12_345] = f32::NEG_INFINITY;
    let bad = Tensor::from_f32(v, [50_000])
        .unwrap()
        .to_device(dev)
        .unwrap();
    assert_eq!(
        first_non_finite(&bad).unwrap(),
        Some(f64::NEG_INFINITY),
        "the first in element order"
    );
}

/// `v_c = tanh(x)·(1 + s)`, `v_u = 0.5·tanh(0.7x)`, computed on the host and handed back on the
/// latent's device (a test model: the DiT computes on the device).
struct Toy;

impl VelocityModel for Toy {
    fn evaluate(
        &mut self,
        latent: &Tensor,
        at: &StepInfo,
        passes: &mut [PassRequest<'_>],
    ) -> wanrt::Result<()> {
        let x = latent.to_device(Device::Cpu)?.to_f32_vec()?;
        let s = (at.timestep / 1000.0) as f32;
        for p in passes {
            let v: Vec<f32> = match p.pass {
                Pass::Cond => x.iter().map(|x| x.tanh() * (1.0 + s)).collect(),
                Pass::Uncond => x.iter().map(|x| 0.5 * (0.7 * x).tanh()).collect(),
            };
            let v = Tensor::from_f32(v, latent.shape().clone())?;
            p.velocity = Some(v.to_device(latent.device())?);
        }
        Ok(())
    }
}

#[test]
fn sampling_with_a_device_latent_matches_the_cpu_bit_for_bit() {
    let Some(dev) = gpu("sampling_with_a_device_latent_matches_the_cpu_bit_for_bit") else {
        return;
    };
    let shape = Shape::from([16, 3, 10, 13]);
    let guidances = [
        Guidance::Cfg { scale: 5.0 },
        Guidance::CfgZeroStar {
            scale: 4.0,
            zero_steps: Some(0),
        },
    ];
    for kind in [
        SolverKind::UniPc,
        SolverKind::DpmPp,
        SolverKind::Euler,
        SolverKind::Lcm,
    ] {
        for guidance in guidances {
            let schedule = kind.schedule(6, 5.0).unwrap();
            let mut config = SamplerConfig::new(kind, schedule, guidance);
            config.seed = 9;
            let run = |device: Device| {
                let mut x = seeded_normal(7, Stream::Latent, &shape, DType::F32, device).unwrap();
                let mut s = Sampler::new(config.clone()).unwrap();
                let mut states = Vec::new();
                s.run(&mut Toy, &mut x, |p| {
                    assert_eq!(p.latent.device(), device, "the latent stays on its device");
                    states.push(bits(p.latent));
                    Flow::Continue
                })
                .unwrap();
                states
            };
            assert!(
                run(Device::Cpu) == run(dev),
                "{kind:?} {guidance:?}: every step's latent"
            );
        }
    }
}
