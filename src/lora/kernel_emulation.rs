//! The CUDA merge's arithmetic (`kernels/lora_merge.cu`) emulated on the CPU, bit for bit: the
//! widened weight, then per change in LoRA order either `v += Σ_k fma(scale·up[o,k], down[k,i])`
//! (one fused chain over the rank in rank order, started from 0) or `v += strength · delta`,
//! then the store of [`MergePlan`]'s [`StoreAs`] (the scaled fp8 scale from the same maximum).
//! The CPU merge sums `up @ down` in its GEMM's order, so the two agree within one rounding step
//! of the stored dtype; the test here checks that, the CUDA test checks the kernel equals this.

use std::collections::BTreeMap;

use super::apply::MergePlan;
use super::store::widen;
use super::Change;
use crate::error::Result;
use crate::tensor::Weight;

/// What the CUDA merge stores for every changed parameter of `weights`, with `strengths` (one
/// per LoRA of the plan).
pub(crate) fn merge_as_kernel(
    plan: &MergePlan<'_>,
    weights: &BTreeMap<String, Weight>,
    strengths: &[f32],
) -> Result<BTreeMap<String, Weight>> {
    let mut out = BTreeMap::new();
    for (name, changes) in plan.changes()? {
        let old = &weights[name];
        let mut v = widen(old)?;
        let n = v.len();
        for (lora, change) in changes {
            let strength = strengths[lora];
            match change {
                Change::Full(t) => {
                    for (x, y) in v.iter_mut().zip(t.f32_data()?) {
                        *x += strength * y;
                    }
                }
                Change::Pair(p) => {
                    let scale = p.scale(strength);
                    let (up, down, rank) = (p.up.f32_data()?, p.down.f32_data()?, p.rank());
                    let cols = n / p.up.dims()[0];
                    for (e, x) in v.iter_mut().enumerate() {
                        let (o, i) = (e / cols, e % cols);
                        let acc = (0..rank).fold(0f32, |acc, k| {
                            (scale * up[o * rank + k]).mul_add(down[k * cols + i], acc)
                        });
                        *x += acc;
                    }
                }
            }
        }
        out.insert(name.to_string(), plan.store_as().store(name, v, old)?);
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::io::layout::LoraFormat;
    use crate::lora::{merge, Lora, LoraModule, LowRank, StoreAs};
    use crate::tensor::convert::narrow_from_f32;
    use crate::tensor::{random, DType, Tensor};

    fn values(n: usize, seed: u32, amp: f32) -> Vec<f32> {
        random::values(n, seed)
            .into_iter()
            .map(|u| amp * u)
            .collect()
    }

    /// A weight of `dims` holding `amp`-sized random values stored as `dtype` (scaled fp8 with
    /// `scale`).
    pub(crate) fn weight(dims: &[usize], dtype: DType, scale: Option<f32>, seed: u32) -> Weight {
        let n = dims.iter().product();
        let v: Vec<f32> = values(n, seed, 0.05)
            .into_iter()
            .map(|x| x / scale.unwrap_or(1.0))
            .collect();
        let mut bytes = Vec::new();
        narrow_from_f32(&v, dtype, &mut bytes);
        Weight {
            tensor: Tensor::from_bytes(bytes, dtype, dims).unwrap(),
            scale,
        }
    }

    /// A LoRA with a pair on `blocks.0.self_attn.q` (`out × inp`, rank `rank`, alpha) and a full
    /// delta on `blocks.0.norm3.bias` (`out`).
    pub(crate) fn lora(out: usize, inp: usize, rank: usize, alpha: f32, seed: u32) -> Lora {
        let t = |v: Vec<f32>, d: Vec<usize>| Tensor::from_f32(v, d.as_slice()).unwrap();
        let mut modules = BTreeMap::new();
        modules.insert(
            "blocks.0.self_attn.q".to_string(),
            LoraModule {
                low_rank: Some(LowRank {
                    down: t(values(rank * inp, seed, 0.5), vec![rank, inp]),
                    up: t(values(out * rank, seed + 1, 0.5), vec![out, rank]),
                    alpha: Some(alpha),
                    magnitude: None,
                }),
                ..Default::default()
            },
        );
        modules.insert(
            "blocks.0.norm3".to_string(),
            LoraModule {
                diff_b: Some(t(values(out, seed + 2, 0.1), vec![out])),
                ..Default::default()
            },
        );
        Lora {
            path: format!("emulated-{seed}.safetensors").into(),
            format: LoraFormat::Musubi,
            modules,
            stored: BTreeMap::new(),
            unmatched: Vec::new(),
            metadata: BTreeMap::new(),
        }
    }

    /// The weights the test LoRAs change, the linear one as `dtype` (scaled with `scale`).
    pub(crate) fn model(
        out: usize,
        inp: usize,
        dtype: DType,
        scale: Option<f32>,
    ) -> BTreeMap<String, Weight> {
        BTreeMap::from([
            (
                "blocks.0.self_attn.q.weight".to_string(),
                weight(&[out, inp], dtype, scale, 7),
            ),
            (
                "blocks.0.norm3.bias".to_string(),
                weight(&[out], DType::F32, None, 8),
            ),
        ])
    }

    /// Every stored form the merge keeps: the float dtypes, plain and scaled fp8.
    pub(crate) const STORED: [(DType, Option<f32>); 7] = [
        (DType::F32, None),
        (DType::BF16, None),
        (DType::F16, None),
        (DType::F8E4M3, None),
        (DType::F8E5M2, None),
        (DType::F8E4M3, Some(0.05 / 448.0)),
        (DType::F8E5M2, Some(1e-4)),
    ];

    /// The spacing of `dtype`'s values around `|x|` (ignoring its subnormals' fixed spacing,
    /// which only makes it larger).
    fn step(dtype: DType, x: f32) -> f32 {
        let (mantissa, min_exp) = match dtype {
            DType::BF16 => (7, -126),
            DType::F16 => (10, -14),
            DType::F8E4M3 => (3, -6),
            DType::F8E5M2 => (2, -14),
            _ => (23, -126),
        };
        let e = (x.abs().log2().floor() as i32).max(min_exp);
        2f32.powi(e - mantissa)
    }

    /// Checks that every value of `a` is within one rounding step of `b`'s (the steps of the
    /// stored dtype at that value, times the scale), and that the scales agree to f32 rounding.
    fn within_one_step(a: &Weight, b: &Weight) {
        assert_eq!(a.dtype(), b.dtype());
        let (sa, sb) = (a.scale.unwrap_or(1.0), b.scale.unwrap_or(1.0));
        assert!((sa - sb).abs() <= sb * 1e-6, "scales {sa} and {sb}");
        let (x, y) = (a.to_f32().unwrap(), b.to_f32().unwrap());
        let (x, y) = (x.f32_data().unwrap(), y.f32_data().unwrap());
        let mut differ = 0;
        for (i, (&p, &q)) in x.iter().zip(y).enumerate() {
            let bound = step(a.dtype(), p.abs().max(q.abs()) / sb) * sb * (1.0 + 1e-5);
            assert!(
                (p - q).abs() <= bound,
                "value {i}: {p} vs {q} (one step {bound})"
            );
            differ += usize::from(p != q);
        }
        // The rounding orders differ on a few values only.
        assert!(
            differ * 10 <= x.len(),
            "{differ} of {} values differ",
            x.len()
        );
    }

    #[test]
    fn the_kernel_arithmetic_equals_the_cpu_merge_within_one_rounding_step() {
        let (out, inp) = (37, 70);
        let (a, b) = (lora(out, inp, 8, 4.0, 11), lora(out, inp, 3, 0.0, 21));
        for (dtype, scale) in STORED {
            let weights = model(out, inp, dtype, scale);
            for strengths in [[1.0f32, 0.6], [-0.7, 2.5]] {
                let loras = [(&a, strengths[0]), (&b, strengths[1])];
                let (cpu, _) = merge(weights.clone(), &loras, StoreAs::Same).unwrap();
                let plan = MergePlan::new(&weights, &loras, StoreAs::Same).unwrap();
                let emulated = merge_as_kernel(&plan, &weights, &strengths).unwrap();
                assert_eq!(emulated.len(), 2);
                for (name, w) in &emulated {
                    let linear = name.ends_with(".q.weight");
                    assert_eq!(w.scale.is_some(), linear && scale.is_some(), "{name}");
                    within_one_step(w, &cpu[name]);
                }
            }
        }
    }

    #[test]
    fn a_full_delta_alone_is_bit_identical_to_the_cpu_merge() {
        let (out, inp) = (5, 9);
        let mut l = lora(out, inp, 2, 1.0, 3);
        l.modules.remove("blocks.0.self_attn.q");
        let weights = model(out, inp, DType::BF16, None);
        let loras = [(&l, 0.3)];
        let (cpu, _) = merge(weights.clone(), &loras, StoreAs::Same).unwrap();
        let plan = MergePlan::new(&weights, &loras, StoreAs::Same).unwrap();
        let emulated = merge_as_kernel(&plan, &weights, &[0.3]).unwrap();
        let name = "blocks.0.norm3.bias";
        assert_eq!(
            emulated[name].tensor.raw_bytes().unwrap(),
            cpu[name].tensor.raw_bytes().unwrap()
        );
    }

    #[test]
    fn a_dora_pair_is_refused_by_the_batched_merge() {
        let (out, inp) = (4, 6);
        let mut l = lora(out, inp, 2, 1.0, 5);
        let q = l.modules.get_mut("blocks.0.self_attn.q").unwrap();
        q.low_rank.as_mut().unwrap().magnitude =
            Some(Tensor::from_f32(vec![1.0; out], [out]).unwrap());
        let weights = model(out, inp, DType::BF16, None);
        let plan = MergePlan::new(&weights, &[(&l, 1.0)], StoreAs::Same).unwrap();
        let e = merge_as_kernel(&plan, &weights, &[1.0]).unwrap_err();
        assert!(e.to_string().contains("DoRA"), "{e}");
    }
}
