//! The CPU backend's bf16 compute emulation (`WANRT_COMPUTE=bf16`), in its own test binary
//! because the mode is read once per process: GEMM-class ops round their inputs, weights and
//! outputs to bf16, the f32 regions do not, and the DiT then lands on its fixtures at the bf16
//! tolerance (and measurably off the f32 one, so the rounding is really there). The fixture
//! harness runs every case this way with `WANRT_COMPUTE=bf16 cargo test --test fixtures`.

mod common;

use wanrt::backend::cpu::compute::{compute_dtype, COMPUTE_VAR};
use wanrt::model::dit::{ForwardOptions, WanDit};
use wanrt::tensor::random::values;
use wanrt::tensor::Weight;
use wanrt::{DType, Tensor};

use common::{fixtures_root, rel_l2_tensors, tensor, Case};

fn is_bf16(v: f32) -> bool {
    half::bf16::from_f32(v).to_f32() == v
}

#[test]
fn bf16_compute_rounds_gemm_class_ops_and_meets_the_dit_fixtures() {
    // The only test of this binary, so no op has read the mode before this line.
    std::env::set_var(COMPUTE_VAR, "bf16");
    assert_eq!(compute_dtype().unwrap(), DType::BF16);

    let x = Tensor::from_f32(values(6 * 40, 1), [6, 40]).unwrap();
    let w = Weight::new(Tensor::from_f32(values(24 * 40, 2), [24, 40]).unwrap());
    let b = Weight::new(Tensor::from_f32(values(24, 3), [24]).unwrap());
    let y = x.linear(&w, Some(&b)).unwrap().to_f32_vec().unwrap();
    assert!(y.iter().all(|&v| is_bf16(v)));
    // The same product from the rounded operands, in f32: equal up to the final rounding.
    let round = |t: &Tensor| {
        t.to_dtype(DType::BF16)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
    };
    let (xr, wr, br) = (
        round(&x),
        Weight::new(round(&w.tensor)),
        Weight::new(round(&b.tensor)),
    );
    let want = xr.linear_f32(&wr, Some(&br)).unwrap().to_f32_vec().unwrap();
    for (g, e) in y.iter().zip(&want) {
        assert_eq!(*g, half::bf16::from_f32(*e).to_f32());
    }
    // linear_f32 (the reference's f32 regions) does not round.
    let f = x.linear_f32(&w, Some(&b)).unwrap().to_f32_vec().unwrap();
    assert!(f.iter().any(|&v| !is_bf16(v)));
    // Elementwise ops and norms stay f32.
    assert!(x
        .layer_norm(None, None, 1e-6)
        .unwrap()
        .to_f32_vec()
        .unwrap()
        .iter()
        .any(|&v| !is_bf16(v)));

    for name in ["dit_forward_f32_t1", "dit_forward_hd128_bf16_t0"] {
        let dir = fixtures_root().join("cases").join(name);
        let Ok(case) = Case::load(&dir) else {
            println!("SKIP {name}: no fixture at {}", dir.display());
            continue;
        };
        let tol = case.bf16_compute_tolerance().unwrap().unwrap();
        let f32_tol = case.rel_l2_tolerance().unwrap();
        let dit = WanDit::open(
            case.path("dit").unwrap(),
            Some(&case.path("config").unwrap()),
        )
        .unwrap();
        let inputs = case.tensors("inputs").unwrap();
        let latent = tensor(&inputs, "latent")
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let t = tensor(&inputs, "timestep").unwrap().to_f32_vec().unwrap();
        let c = tensor(&inputs, "context")
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let c = c.reshape([c.dims()[1], c.dims()[2]]).unwrap();
        let v = dit
            .forward(&latent, &t, &[c], &ForwardOptions::default())
            .unwrap();
        let expected = case.tensors("expected").unwrap();
        let err = rel_l2_tensors(&v, tensor(&expected, "velocity").unwrap());
        println!("{name}: bf16-compute rel_l2={err:.3e} tol={tol:e}");
        assert!(err <= tol && err > f32_tol, "{name}: {err:e}");
    }
}
