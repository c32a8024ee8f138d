//! Linear layers: `y = x · Wᵀ + b` with `W` kept in its stored dtype.
//!
//! A bf16/f16/fp8 weight is never converted whole: a panel of its output rows is widened to f32
//! (in parallel) into a reused scratch buffer, then one multi-threaded sgemm multiplies the
//! activations by the panel and writes the matching output columns in place. Widening costs
//! O(out·in) against the GEMM's O(rows·out·in), so it is cheap once rows is in the hundreds.
//! An f32 weight without a scale whose bytes are aligned is multiplied directly, with no copy.
//! In bf16 compute the product runs through [`bgemm_raw`], which rounds activations and weight
//! to bf16 as it packs them.

use rayon::prelude::*;

use super::gemm::{sgemm, sgemm_raw, MatRef, RawMatMut};
use super::gemm_bf16::bgemm_raw;
use crate::error::{Error, Result};
use crate::tensor::{DType, Weight};

/// Bytes of widened f32 weight per panel, and the fewest output columns per panel. Every sgemm
/// call re-reads (and repacks) all the activations, so narrow panels cost dearly: 16 columns ran
/// at a quarter of the speed of 512 (3744 tokens, in 8960). 512 columns of the widest Wan weight
/// (14B FFN down, in 13824) take 28 MB of scratch, a tenth of that weight in f32.
const PANEL_BYTES: usize = 8 << 20;
/// The same for the bf16 product, which packs (converts) all the activations once per panel:
/// wider panels, so that the 1.3B model's FFN weights take one or two.
const BF16_PANEL_BYTES: usize = 64 << 20;
const MIN_PANEL: usize = 512;
/// Weight rows each parallel widening job converts.
const WIDEN_ROWS: usize = 16;

/// `out[r, o] = Σ_i x[r, i] · w[o, i] + bias[o]`: `x` is row-major `[rows, in]`, the weight
/// `[out, in]` (any float dtype, scale applied), `bias` has `out` values and `out` is
/// row-major `[rows, out]`. With `bf16` the activations and every weight value are rounded to
/// bf16 and multiplied with f32 sums (the bf16 compute of [`super::compute`]).
pub fn linear(
    x: &[f32],
    rows: usize,
    weight: &Weight,
    bias: Option<&[f32]>,
    bf16: bool,
    out: &mut [f32],
) -> Result<()> {
    let &[n_out, n_in] = weight.dims() else {
        return Err(Error::InvalidArgument(format!(
            "linear: weight of shape {:?}",
            weight.dims()
        )));
    };
    if x.len() != rows * n_in || out.len() != rows * n_out || bias.is_some_and(|b| b.len() != n_out)
    {
        return Err(Error::InvalidArgument(format!(
            "linear: {} inputs, {} outputs for {rows} rows and a [{n_out}, {n_in}] weight",
            x.len(),
            out.len()
        )));
    }
    if rows == 0 || n_out == 0 {
        return Ok(());
    }
    // With a bias the output starts as the bias and the GEMM accumulates onto it.
    match bias {
        Some(b) => out
            .par_chunks_mut(n_out)
            .for_each(|row| row.copy_from_slice(b)),
        None => out.fill(0.0),
    }
    if n_in == 0 {
        return Ok(());
    }
    let threads = rayon::current_num_threads();
    let xv = MatRef::row_major(x, rows, n_in);

    if weight.dtype() == DType::F32 && weight.scale.is_none() && !bf16 {
        if let Ok(w) = bytemuck::try_cast_slice::<u8, f32>(weight.tensor.raw_bytes()?) {
            sgemm(
                xv,
                MatRef::row_major(w, n_out, n_in).t(),
                out,
                true,
                threads,
            );
            return Ok(());
        }
    }

    let panel_bytes = if bf16 { BF16_PANEL_BYTES } else { PANEL_BYTES };
    let panel = (panel_bytes / 4 / n_in)
        .max(MIN_PANEL)
        .min(n_out.next_multiple_of(WIDEN_ROWS));
    let panel = panel / WIDEN_ROWS * WIDEN_ROWS;
    let out_all = RawMatMut {
        ptr: out.as_mut_ptr(),
        rows,
        cols: n_out,
        row_stride: n_out,
    };
    // Taken, not borrowed, from the thread's cache: a nested linear (rayon may run another job on
    // this thread while it waits) then simply allocates its own buffer.
    let mut scratch = SCRATCH.take();
    scratch.resize(panel.min(n_out) * n_in, 0.0);
    let result = (|| {
        for o0 in (0..n_out).step_by(panel) {
            let n = panel.min(n_out - o0);
            let w = &mut scratch[..n * n_in];
            w.par_chunks_mut(WIDEN_ROWS * n_in)
                .enumerate()
                .try_for_each(|(i, chunk)| {
                    let r0 = o0 + i * WIDEN_ROWS;
                    weight.widen_rows(r0..r0 + chunk.len() / n_in, chunk)
                })?;
            let wv = MatRef::row_major(w, n, n_in).t();
            let block = out_all.block(0, o0, rows, n);
            // SAFETY: the block lies inside `out`, which this function borrows exclusively.
            unsafe {
                if bf16 {
                    bgemm_raw(xv, wv, block, true, threads)
                } else {
                    sgemm_raw(xv, wv, block, true, threads)
                }
            };
        }
        Ok(())
    })();
    SCRATCH.set(scratch);
    result
}

thread_local! {
    /// The widened-weight panel, kept between calls so that big panels are not re-faulted in.
    static SCRATCH: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::random::values;
    use crate::tensor::Tensor;

    fn reference(
        x: &[f32],
        w: &[f32],
        b: Option<&[f32]>,
        rows: usize,
        n_out: usize,
        n_in: usize,
    ) -> Vec<f64> {
        let mut out = vec![0.0f64; rows * n_out];
        for r in 0..rows {
            for o in 0..n_out {
                let dot: f64 = (0..n_in)
                    .map(|i| x[r * n_in + i] as f64 * w[o * n_in + i] as f64)
                    .sum();
                out[r * n_out + o] = dot + b.map_or(0.0, |b| b[o] as f64);
            }
        }
        out
    }

    fn check(
        rows: usize,
        n_out: usize,
        n_in: usize,
        dtype: DType,
        scale: Option<f32>,
        with_bias: bool,
    ) {
        let x = values(rows * n_in, 1);
        let w32 = Tensor::from_f32(values(n_out * n_in, 2), [n_out, n_in]).unwrap();
        let weight = Weight {
            tensor: w32.to_dtype(dtype).unwrap(),
            scale,
        };
        // The reference uses the values the kernel must see: stored, dequantized, scaled.
        let w_ref = weight.to_f32().unwrap().to_f32_vec().unwrap();
        let bias = with_bias.then(|| values(n_out, 3));
        let mut out = vec![f32::NAN; rows * n_out];
        linear(&x, rows, &weight, bias.as_deref(), false, &mut out).unwrap();
        let want = reference(&x, &w_ref, bias.as_deref(), rows, n_out, n_in);
        for (i, (&g, &e)) in out.iter().zip(&want).enumerate() {
            let tol = 1e-5 * (n_in as f64).sqrt() * (1.0 + e.abs());
            assert!(
                (g as f64 - e).abs() <= tol,
                "{dtype:?} {rows}x{n_in}->{n_out} at {i}: {g} vs {e}"
            );
        }
    }

    #[test]
    fn all_dtypes_and_odd_sizes() {
        for dtype in [
            DType::F32,
            DType::BF16,
            DType::F16,
            DType::F8E4M3,
            DType::F8E5M2,
        ] {
            for (rows, n_out, n_in) in [
                (1, 1, 1),
                (7, 65, 129),
                (65, 7, 1),
                (129, 33, 64),
                (3, 129, 7),
            ] {
                check(rows, n_out, n_in, dtype, None, true);
            }
        }
    }

    #[test]
    fn bf16_product_matches_rounded_reference() {
        let round = |v: &[f32]| -> Vec<f32> {
            v.iter()
                .map(|&x| half::bf16::from_f32(x).to_f32())
                .collect()
        };
        for (rows, n_out, n_in, dtype) in [(7, 65, 129, DType::F32), (30, 600, 4096, DType::BF16)] {
            let x = values(rows * n_in, 1);
            let w32 = Tensor::from_f32(values(n_out * n_in, 2), [n_out, n_in]).unwrap();
            let weight = Weight::new(w32.to_dtype(dtype).unwrap());
            let w = weight.to_f32().unwrap().to_f32_vec().unwrap();
            let bias = values(n_out, 3);
            let mut out = vec![f32::NAN; rows * n_out];
            linear(&x, rows, &weight, Some(&bias), true, &mut out).unwrap();
            let want = reference(&round(&x), &round(&w), Some(&bias), rows, n_out, n_in);
            for (i, (&g, &e)) in out.iter().zip(&want).enumerate() {
                let tol = 1e-5 * (n_in as f64).sqrt() * (1.0 + e.abs());
                assert!((g as f64 - e).abs() <= tol, "{dtype:?} at {i}: {g} vs {e}");
            }
        }
    }

    #[test]
    fn scaled_fp8_without_bias() {
        check(9, 40, 24, DType::F8E4M3, Some(0.037), false);
        check(9, 40, 24, DType::F32, Some(2.5), false);
    }

    #[test]
    fn several_panels() {
        // in = 4096 makes panels of 512 rows: 600 outputs take two (the second partial).
        check(5, 600, 4096, DType::BF16, None, true);
    }

    #[test]
    fn unaligned_f32_weight_is_widened() {
        // An f32 weight whose bytes start at an odd address cannot be borrowed as &[f32].
        let (n_out, n_in) = (5, 3);
        let w = values(n_out * n_in, 4);
        let mut bytes = vec![0u8; 1 + w.len() * 4];
        bytes[1..].copy_from_slice(bytemuck::cast_slice(&w));
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, &bytes).unwrap();
        let map = std::sync::Arc::new(unsafe { memmap2::Mmap::map(&file) }.unwrap());
        let t = Tensor::from_mmap(map, 1..bytes.len(), DType::F32, [n_out, n_in]).unwrap();
        let x = values(2 * n_in, 5);
        let mut out = vec![0.0; 2 * n_out];
        linear(&x, 2, &Weight::new(t), None, false, &mut out).unwrap();
        let want = reference(&x, &w, None, 2, n_out, n_in);
        for (&g, &e) in out.iter().zip(&want) {
            assert!((g as f64 - e).abs() < 1e-5);
        }
    }

    #[test]
    fn empty_inner_dimension_gives_bias() {
        let weight = Weight::new(Tensor::from_f32(vec![], [3, 0]).unwrap());
        let mut out = vec![f32::NAN; 6];
        linear(&[], 2, &weight, Some(&[1.0, 2.0, 3.0]), false, &mut out).unwrap();
        assert_eq!(out, [1.0, 2.0, 3.0, 1.0, 2.0, 3.0]);
    }
}
