//! CPU kernels for elementwise ops on f32 slices: numpy-broadcast binary ops and unary maps.
//!
//! A binary op is planned once per call: size-1 dims are dropped and dims that are adjacent in
//! both inputs are merged, so the innermost remaining dim is a run in which each input is either
//! contiguous or one repeated value. The hot loop is then one of four plain slice loops
//! (vector-vector, vector-scalar, ...) and index arithmetic happens once per run, never per
//! element. Same-shape ops, a bias broadcast over leading dims and a per-row scale all reduce to
//! a handful of long runs.
//!
//! Loops run in the widest SIMD instruction set of the CPU (see [`simd`]), and the
//! transcendental functions are polynomial approximations that vectorize (std's `exp` and `tanh`
//! are libm calls, one element at a time).

use rayon::prelude::*;

/// Elements per parallel task: below this, handing work to another thread costs more than it
/// saves.
pub const PAR_CHUNK: usize = 1 << 15;

/// Runs `body` compiled for the widest SIMD instruction set of this CPU (AVX-512, AVX2+FMA, or
/// the baseline), so that the compiler vectorizes it with 16 (or 8) lanes instead of the
/// baseline's 4. This only works when `body` is inlined into the functions built with those
/// target features: pass an `#[inline(always)]` closure whose loops call only
/// `#[inline(always)]` helpers.
#[inline(always)]
pub fn simd<R>(body: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("avx512bw") && has!("avx512dq") && has!("avx512vl") {
            // SAFETY: the CPU supports the features the function is compiled for.
            return unsafe { simd_avx512(body) };
        }
        if has!("avx2") && has!("fma") {
            // SAFETY: as above.
            return unsafe { simd_avx2(body) };
        }
    }
    body()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
fn simd_avx512<R>(body: impl FnOnce() -> R) -> R {
    body()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn simd_avx2<R>(body: impl FnOnce() -> R) -> R {
    body()
}

/// Applies `f` to corresponding chunks of `x` and `out` (equal lengths), in parallel when large.
#[inline(always)]
fn par_zip(x: &[f32], out: &mut [f32], f: impl Fn(&[f32], &mut [f32]) + Sync) {
    debug_assert_eq!(x.len(), out.len());
    if out.len() <= PAR_CHUNK {
        f(x, out);
    } else {
        out.par_chunks_mut(PAR_CHUNK)
            .zip(x.par_chunks(PAR_CHUNK))
            .for_each(|(o, x)| f(x, o));
    }
}

// ---------------------------------------------------------------------------------------------
// Binary ops with broadcasting.

/// A binary arithmetic op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    /// `a + b`
    Add,
    /// `a - b`
    Sub,
    /// `a * b`
    Mul,
    /// `a / b`
    Div,
}

/// The numpy broadcast of two shapes (dims aligned from the right; each pair equal or one of them
/// 1), or `None` when they are incompatible.
pub fn broadcast_dims(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let rank = a.len().max(b.len());
    let dim = |d: &[usize], i: usize| {
        if i < rank - d.len() {
            1
        } else {
            d[i - (rank - d.len())]
        }
    };
    (0..rank)
        .map(|i| match (dim(a, i), dim(b, i)) {
            (x, y) if x == y || y == 1 => Some(x),
            (1, y) => Some(y),
            _ => None,
        })
        .collect()
}

/// The broadcast iteration space after collapsing: `outer` dims with per-input element strides
/// (0 where the input is broadcast), then an innermost run of `inner` elements in which each
/// input is contiguous (`*_run` true) or a single repeated value.
struct Plan {
    outer: Vec<usize>,
    a_strides: Vec<usize>,
    b_strides: Vec<usize>,
    inner: usize,
    a_run: bool,
    b_run: bool,
}

impl Plan {
    fn new(a_dims: &[usize], b_dims: &[usize], out_dims: &[usize]) -> Plan {
        let a_strides = broadcast_strides(a_dims, out_dims);
        let b_strides = broadcast_strides(b_dims, out_dims);
        let (mut outer, mut sa, mut sb) = (Vec::new(), Vec::new(), Vec::new());
        for (i, &n) in out_dims.iter().enumerate() {
            if n == 1 {
                continue;
            }
            let (x, y) = (a_strides[i], b_strides[i]);
            // Merge into the previous dim when both inputs step through the two dims as one.
            if let (Some(d), Some(px), Some(py)) = (outer.last_mut(), sa.last_mut(), sb.last_mut())
            {
                if *px == x * n && *py == y * n {
                    *d *= n;
                    (*px, *py) = (x, y);
                    continue;
                }
            }
            outer.push(n);
            sa.push(x);
            sb.push(y);
        }
        // The innermost non-trivial dim of a contiguous input has stride 1 unless broadcast.
        let inner = outer.pop().unwrap_or(1);
        let a_run = sa.pop().unwrap_or(0) != 0;
        let b_run = sb.pop().unwrap_or(0) != 0;
        Plan {
            outer,
            a_strides: sa,
            b_strides: sb,
            inner,
            a_run,
            b_run,
        }
    }

    /// Computes the broadcast result `out = f(a, b)`, in parallel chunks when it is large.
    #[inline(always)]
    fn run(
        &self,
        a: &[f32],
        b: &[f32],
        out: &mut [f32],
        f: impl Fn(f32, f32) -> f32 + Copy + Sync,
    ) {
        if out.len() <= PAR_CHUNK {
            simd(
                #[inline(always)]
                || self.fill(a, b, out, 0, f),
            );
        } else {
            out.par_chunks_mut(PAR_CHUNK)
                .enumerate()
                .for_each(|(i, o)| {
                    simd(
                        #[inline(always)]
                        || self.fill(a, b, o, i * PAR_CHUNK, f),
                    )
                });
        }
    }

    /// Computes `out` = elements `start..start + out.len()` of the broadcast result.
    #[inline(always)]
    fn fill(
        &self,
        a: &[f32],
        b: &[f32],
        out: &mut [f32],
        start: usize,
        f: impl Fn(f32, f32) -> f32,
    ) {
        let rank = self.outer.len();
        let (mut run, mut col) = (start / self.inner, start % self.inner);
        // Multi-index of the first run and the input offsets it maps to; updated per run below.
        let mut idx = vec![0; rank];
        let (mut oa, mut ob) = (0, 0);
        for d in (0..rank).rev() {
            idx[d] = run % self.outer[d];
            run /= self.outer[d];
            oa += idx[d] * self.a_strides[d];
            ob += idx[d] * self.b_strides[d];
        }
        let mut done = 0;
        while done < out.len() {
            let len = (self.inner - col).min(out.len() - done);
            let o = &mut out[done..done + len];
            match (self.a_run, self.b_run) {
                (true, true) => {
                    let (x, y) = (&a[oa + col..oa + col + len], &b[ob + col..ob + col + len]);
                    for ((o, &x), &y) in o.iter_mut().zip(x).zip(y) {
                        *o = f(x, y);
                    }
                }
                (true, false) => {
                    let y = b[ob];
                    for (o, &x) in o.iter_mut().zip(&a[oa + col..oa + col + len]) {
                        *o = f(x, y);
                    }
                }
                (false, true) => {
                    let x = a[oa];
                    for (o, &y) in o.iter_mut().zip(&b[ob + col..ob + col + len]) {
                        *o = f(x, y);
                    }
                }
                (false, false) => o.fill(f(a[oa], b[ob])),
            }
            done += len;
            col = 0;
            for d in (0..rank).rev() {
                idx[d] += 1;
                oa += self.a_strides[d];
                ob += self.b_strides[d];
                if idx[d] < self.outer[d] {
                    break;
                }
                oa -= self.a_strides[d] * self.outer[d];
                ob -= self.b_strides[d] * self.outer[d];
                idx[d] = 0;
            }
        }
    }
}

/// Element strides of a contiguous tensor of `dims` read as the broadcast shape `out_dims`
/// (0 along the dims it is broadcast over).
fn broadcast_strides(dims: &[usize], out_dims: &[usize]) -> Vec<usize> {
    let mut strides = vec![0; out_dims.len()];
    let offset = out_dims.len() - dims.len();
    let mut s = 1;
    for i in (0..dims.len()).rev() {
        if dims[i] != 1 {
            strides[offset + i] = s;
        }
        s *= dims[i];
    }
    strides
}

/// `out = a (op) b` with numpy broadcasting: `a` and `b` are contiguous tensors of `a_dims` and
/// `b_dims`, `out` has `out_dims` = [`broadcast_dims`]`(a_dims, b_dims)`.
///
/// # Panics
/// If the slice lengths do not match the dims (a bug in the caller).
pub fn binary(
    op: BinaryOp,
    a: &[f32],
    a_dims: &[usize],
    b: &[f32],
    b_dims: &[usize],
    out: &mut [f32],
    out_dims: &[usize],
) {
    assert_eq!(
        a.len(),
        a_dims.iter().product::<usize>(),
        "binary: lhs length"
    );
    assert_eq!(
        b.len(),
        b_dims.iter().product::<usize>(),
        "binary: rhs length"
    );
    assert_eq!(
        out.len(),
        out_dims.iter().product::<usize>(),
        "binary: out length"
    );
    if out.is_empty() {
        return;
    }
    let plan = Plan::new(a_dims, b_dims, out_dims);
    // Closures this small are always inlined into `Plan::fill`.
    match op {
        BinaryOp::Add => plan.run(a, b, out, |x, y| x + y),
        BinaryOp::Sub => plan.run(a, b, out, |x, y| x - y),
        BinaryOp::Mul => plan.run(a, b, out, |x, y| x * y),
        BinaryOp::Div => plan.run(a, b, out, |x, y| x / y),
    }
}

// ---------------------------------------------------------------------------------------------
// Unary maps.

/// A unary elementwise op.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum UnaryOp {
    /// `x * sigmoid(x)`
    Silu,
    /// `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`
    GeluTanh,
    /// `0.5 x (1 + erf(x / sqrt(2)))`
    GeluErf,
    /// `tanh(x)`
    Tanh,
    /// `e^x`
    Exp,
    /// `|x|`
    Abs,
    /// `x^2`
    Sqr,
    /// `sqrt(x)` (NaN below 0)
    Sqrt,
    /// `x * mul + add`
    Affine {
        /// The factor.
        mul: f32,
        /// The offset.
        add: f32,
    },
    /// `x` limited to `[min, max]` (NaN stays NaN)
    Clamp {
        /// The lower bound.
        min: f32,
        /// The upper bound.
        max: f32,
    },
}

/// `out[i] = op(x[i])`.
///
/// Every op is an `#[inline(always)]` closure (not a function item, which the compiler may leave
/// as a call per element) so that it vectorizes inside [`simd`].
///
/// # Panics
/// If `x` and `out` differ in length (a bug in the caller).
#[allow(clippy::redundant_closure)]
pub fn unary(op: UnaryOp, x: &[f32], out: &mut [f32]) {
    assert_eq!(x.len(), out.len(), "unary: lengths differ");
    macro_rules! map_inline {
        ($f:expr) => {
            map(
                x,
                out,
                #[inline(always)]
                $f,
            )
        };
    }
    match op {
        UnaryOp::Silu => map_inline!(|v| silu(v)),
        UnaryOp::GeluTanh => map_inline!(|v| gelu_tanh(v)),
        UnaryOp::GeluErf => map_inline!(|v| gelu_erf(v)),
        UnaryOp::Tanh => map_inline!(|v| tanh(v)),
        UnaryOp::Exp => map_inline!(|v| exp(v)),
        UnaryOp::Abs => map_inline!(|v| v.abs()),
        UnaryOp::Sqr => map_inline!(|v| v * v),
        UnaryOp::Sqrt => map_inline!(|v| v.sqrt()),
        UnaryOp::Affine { mul, add } => map_inline!(move |v| v * mul + add),
        // Compare-and-select rather than f32::clamp, which panics on bad bounds; NaN stays NaN.
        UnaryOp::Clamp { min, max } => map_inline!(move |v| {
            let v = if v < min { min } else { v };
            if v > max {
                max
            } else {
                v
            }
        }),
    }
}

#[inline(always)]
fn map(x: &[f32], out: &mut [f32], f: impl Fn(f32) -> f32 + Copy + Sync) {
    par_zip(x, out, |x, o| {
        simd(
            #[inline(always)]
            || {
                for (o, &v) in o.iter_mut().zip(x) {
                    *o = f(v);
                }
            },
        )
    });
}

/// `x * sigmoid(x)`, accurate to a few ulp.
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x * sigmoid(x)
}

/// `1 / (1 + e^(-x))`, written with `e^(-|x|)` so that nothing overflows and the lower tail keeps
/// its relative accuracy.
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    let e = exp(-x.abs());
    let r = 1.0 / (1.0 + e);
    if x < 0.0 {
        e * r
    } else {
        r
    }
}

/// The tanh GELU. `0.5 (1 + tanh u) = sigmoid(2u)` exactly, and the sigmoid has no cancellation
/// for negative `x`, so it is also more accurate than evaluating tanh.
#[inline(always)]
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    let u = SQRT_2_OVER_PI * (x + 0.044715 * x * x * x);
    x * sigmoid(2.0 * u)
}

/// The exact (erf) GELU `x Φ(x)`, with `Φ` from erfc in the tails so that it keeps its relative
/// accuracy for negative `x` too.
#[inline(always)]
pub fn gelu_erf(x: f32) -> f32 {
    let z = x * std::f32::consts::FRAC_1_SQRT_2;
    let phi = if z.abs() < 1.0 {
        0.5 + 0.5 * erf_small(z)
    } else {
        // e^(-z^2) = e^(-x^2/2), taken from x itself: rounding z first would cost accuracy.
        let a = x.abs().min(16.0);
        let half_erfc = 0.5 * erfc_tail(a * std::f32::consts::FRAC_1_SQRT_2, exp_neg_sq(a, 0.5));
        if z < 0.0 {
            half_erfc
        } else {
            1.0 - half_erfc
        }
    };
    x * phi
}

/// `e^x` for all f32 inputs (overflow to infinity, gradual underflow, NaN kept), within 2 ulp.
///
/// `x = n ln2 + r` with `|r| <= ln2/2`; `e^r` from its Taylor series to `r^7` (truncation error
/// below 1e-8), scaled by `2^n` in two steps so that results near overflow or in the subnormal
/// range come out right.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // Adding 1.5 * 2^23 rounds to an integer that then sits in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    // ln 2 split so that n * LN2_HI is exact for |n| < 2^14.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-104.0, 89.0);
    let t = x * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (1.0 / 2.0
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    let k = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let (k1, k2) = (k >> 1, k - (k >> 1));
    let pow2 = |e: i32| f32::from_bits(((e + 127) << 23) as u32);
    p * pow2(k1) * pow2(k2)
}

/// `tanh(x)` within a few ulp: an odd Taylor polynomial near 0 (where `1 - e^(-2|x|)` would
/// cancel), `(1 - e^(-2|x|)) / (1 + e^(-2|x|))` elsewhere.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    let a = x.abs();
    let r = if a < 0.3 {
        // Terms to x^11; the next one is below 2e-9 relative at |x| = 0.3.
        let z = a * a;
        a + a
            * z
            * (-1.0 / 3.0
                + z * (2.0 / 15.0
                    + z * (-17.0 / 315.0 + z * (62.0 / 2835.0 + z * (-1382.0 / 155_925.0)))))
    } else {
        let e = exp(-2.0 * a);
        (1.0 - e) / (1.0 + e)
    };
    r.copysign(x)
}

/// `erf(x)` within 3e-7 relative error.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    if a < 1.0 {
        erf_small(x)
    } else {
        let a = a.clamp(1.0, 11.0);
        (1.0 - erfc_tail(a, exp_neg_sq(a, 1.0))).copysign(x)
    }
}

/// `erf(x)` for `|x| < 1`: `x P(x^2)`, a degree-7 Chebyshev fit of `erf(x)/x` in `x^2`.
#[inline(always)]
fn erf_small(x: f32) -> f32 {
    let u = (x * x).min(1.0);
    let p = -9.667_045e-6;
    let p = p * u + 1.126_595_9e-4;
    let p = p * u - 8.484_08e-4;
    let p = p * u + 5.221_031_6e-3;
    let p = p * u - 2.686_543e-2;
    let p = p * u + 0.112_837_82;
    let p = p * u - 0.376_126_38;
    let p = p * u + std::f32::consts::FRAC_2_SQRT_PI;
    x * p
}

/// `e^(-s x^2)` for `s` a power of two and `|x| <= 16`, without the error that rounding `x^2`
/// would bring (it grows with `x^2`): `x = hi + lo` with `hi` holding 12 significant bits, so
/// `x^2 = hi^2 + lo (x + hi)` where `hi^2` is exact and `d = s lo (x + hi)` is below 0.12, small
/// enough for a 5-term series of `e^(-d)` (error < 2e-8).
#[inline(always)]
fn exp_neg_sq(x: f32, s: f32) -> f32 {
    let hi = f32::from_bits(x.to_bits() & 0xFFFF_F000);
    let d = s * (x - hi) * (x + hi);
    let e_d = 1.0 - d * (1.0 - d * (1.0 / 2.0 - d * (1.0 / 6.0 - d * (1.0 / 24.0))));
    exp(-s * hi * hi) * e_d
}

/// `erfc(x)` for `1 <= x <= 11` within 2e-7 relative error, given `exp_neg_x2 = e^(-x^2)`:
/// `e^(-x^2) t C(t)` with `t = 1/x`, where `C` is a 12-term Chebyshev series fitted to
/// `erfc(x) e^(x^2) x` over `t` in `[0.09, 1]`, summed with Clenshaw's recurrence (stable in f32,
/// unlike the monomial form). Beyond `x = 11` erfc underflows f32.
#[inline(always)]
fn erfc_tail(x: f32, exp_neg_x2: f32) -> f32 {
    const C: [f32; 12] = [
        0.499_446_1,
        -0.069_751_78,
        -0.004_236_72,
        0.002_559_292,
        -4.668_646e-4,
        2.413_095_4e-5,
        1.407_590_7e-5,
        -5.717_095_5e-6,
        1.169_404_2e-6,
        -8.134_644e-8,
        -4.277_480_4e-8,
        2.197_574_4e-8,
    ];
    let t = 1.0 / x.clamp(1.0, 11.0);
    // Map t in [0.09, 1] onto [-1, 1].
    let s = t * 2.197_802_3 - 1.197_802_2;
    let (mut b1, mut b2) = (0.0f32, 0.0f32);
    for &c in C[1..].iter().rev() {
        (b1, b2) = (2.0 * s * b1 - b2 + c, b1);
    }
    let series = s * b1 - b2 + C[0];
    exp_neg_x2 * t * series
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random f32 in [-scale, scale).
    fn rand_vec(n: usize, seed: u32, scale: f32) -> Vec<f32> {
        let v = crate::tensor::random::values(n, seed);
        v.into_iter().map(|x| x * scale).collect()
    }

    /// erf by its Taylor series (|x| < 3) or continued fraction for erfc, in f64.
    fn erf_ref(x: f64) -> f64 {
        let a = x.abs();
        let r = if a < 3.0 {
            let (mut term, mut sum, mut k) = (a, a, 0.0);
            while term.abs() > 1e-18 * sum.abs() {
                k += 1.0;
                term *= -a * a / k;
                sum += term / (2.0 * k + 1.0);
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            1.0 - erfc_cf(a)
        };
        r.copysign(x)
    }

    /// erfc(x) for x >= 3 from its continued fraction, evaluated from the tail.
    fn erfc_cf(x: f64) -> f64 {
        let mut f = 0.0;
        for k in (1..200).rev() {
            f = (k as f64 / 2.0) / (x + f);
        }
        (-x * x).exp() / std::f64::consts::PI.sqrt() / (x + f)
    }

    fn max_rel_err(got: f32, want: f64) -> f64 {
        if want == 0.0 {
            got.abs() as f64
        } else {
            ((got as f64 - want) / want).abs()
        }
    }

    #[test]
    fn broadcast_dims_follow_numpy() {
        assert_eq!(broadcast_dims(&[2, 3, 4], &[4]), Some(vec![2, 3, 4]));
        assert_eq!(broadcast_dims(&[2, 1, 4], &[3, 1]), Some(vec![2, 3, 4]));
        assert_eq!(broadcast_dims(&[], &[5]), Some(vec![5]));
        assert_eq!(broadcast_dims(&[0, 3], &[1, 3]), Some(vec![0, 3]));
        assert_eq!(broadcast_dims(&[2, 3], &[3, 2]), None);
        assert_eq!(broadcast_dims(&[0], &[2]), None);
    }

    #[test]
    fn exp_matches_f64_over_the_whole_range() {
        let mut worst = 0.0f64;
        let mut x = -103.0f32;
        while x < 88.7 {
            let want = (x as f64).exp();
            // Subnormal results carry fewer significant bits: check those absolutely.
            if want > f32::MIN_POSITIVE as f64 {
                worst = worst.max(max_rel_err(exp(x), want));
            } else {
                assert!((exp(x) as f64 - want).abs() <= 2.0 * 1.4e-45, "exp({x})");
            }
            x += 0.001_37;
        }
        assert!(worst < 3e-7, "exp relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(89.0), f32::INFINITY);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp(-200.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn tanh_matches_f64() {
        let mut worst = 0.0f64;
        for &x in &rand_vec(100_000, 1, 10.0) {
            worst = worst.max(max_rel_err(tanh(x), (x as f64).tanh()));
        }
        for i in 1..1000 {
            let x = i as f32 * 1e-3;
            worst = worst.max(max_rel_err(tanh(-x), -(x as f64).tanh()));
        }
        assert!(worst < 5e-7, "tanh relative error {worst}");
        assert_eq!(tanh(0.0), 0.0);
        assert_eq!(tanh(100.0), 1.0);
        assert_eq!(tanh(f32::NEG_INFINITY), -1.0);
        assert!(tanh(f32::NAN).is_nan());
    }

    #[test]
    fn erf_is_accurate_to_1e_6_relative() {
        let mut worst = 0.0f64;
        let mut x = -6.0f32;
        while x < 6.0 {
            worst = worst.max(max_rel_err(erf(x), erf_ref(x as f64)));
            x += 0.000_71;
        }
        for i in 1..1000 {
            let x = i as f32 * 1e-6;
            worst = worst.max(max_rel_err(erf(x), erf_ref(x as f64)));
        }
        assert!(worst < 1e-6, "erf relative error {worst}");
        assert_eq!(erf(0.0), 0.0);
        assert_eq!(erf(f32::INFINITY), 1.0);
        assert_eq!(erf(f32::NEG_INFINITY), -1.0);
        assert!(erf(f32::NAN).is_nan());
    }

    #[test]
    fn activations_match_their_definitions() {
        let xs = rand_vec(20_000, 2, 12.0);
        let (mut w_silu, mut w_tanh, mut w_erf) = (0.0f64, 0.0f64, 0.0f64);
        for &x in &xs {
            let xd = x as f64;
            w_silu = w_silu.max(max_rel_err(silu(x), xd / (1.0 + (-xd).exp())));
            let u = (2.0 / std::f64::consts::PI).sqrt() * (xd + 0.044715 * xd * xd * xd);
            // 0.5 (1 + tanh u) = 1 / (1 + e^(-2u)): the right-hand form does not cancel in f64
            // for very negative x. Computing u in f32 costs a few ulp of u, which the result
            // feels in proportion to |u| there; subnormal results have only absolute precision.
            let want = xd / (1.0 + (-2.0 * u).exp());
            let tol = (5e-7 + 5e-7 * u.abs()) * want.abs() + 1e-43;
            w_tanh = w_tanh.max((gelu_tanh(x) as f64 - want).abs() / tol * 1e-6);
            let z = xd / std::f64::consts::SQRT_2;
            // Φ(x) from erfc in the lower tail, where 1 + erf(z) cancels.
            let phi = if z < -3.0 {
                0.5 * erfc_cf(-z)
            } else {
                0.5 * (1.0 + erf_ref(z))
            };
            w_erf = w_erf.max(max_rel_err(gelu_erf(x), xd * phi));
        }
        assert!(w_silu < 1e-6, "silu {w_silu}");
        assert!(w_tanh < 1e-6, "gelu_tanh {w_tanh}");
        assert!(w_erf < 1e-6, "gelu_erf {w_erf}");
        for f in [silu, gelu_tanh, gelu_erf] {
            assert_eq!(f(0.0), 0.0);
            assert_eq!(f(1e30), 1e30);
            assert_eq!(f(-1e30), 0.0);
            assert!(f(f32::NAN).is_nan());
        }
    }

    /// Naive broadcasting by explicit multi-indices.
    fn binary_ref(
        a: &[f32],
        ad: &[usize],
        b: &[f32],
        bd: &[usize],
        f: impl Fn(f32, f32) -> f32,
    ) -> Vec<f32> {
        let od = broadcast_dims(ad, bd).unwrap();
        let n: usize = od.iter().product();
        let at = |d: &[usize], idx: &[usize]| {
            let off = od.len() - d.len();
            d.iter().enumerate().fold(0, |acc, (i, &s)| {
                acc * s + if s == 1 { 0 } else { idx[off + i] }
            })
        };
        (0..n)
            .map(|mut l| {
                let mut idx = vec![0; od.len()];
                for i in (0..od.len()).rev() {
                    idx[i] = l % od[i];
                    l /= od[i];
                }
                f(a[at(ad, &idx)], b[at(bd, &idx)])
            })
            .collect()
    }

    #[test]
    fn binary_broadcasting_matches_reference() {
        let cases: &[(&[usize], &[usize])] = &[
            (&[2, 3, 4], &[2, 3, 4]),
            (&[2, 3, 4], &[4]),
            (&[2, 3, 4], &[2, 1, 4]),
            (&[2, 3, 4], &[2, 3, 1]),
            (&[2, 3, 4], &[1, 3, 1]),
            (&[3, 1], &[1, 4]),
            (&[1], &[5, 1, 2]),
            (&[], &[3, 2]),
            (&[3, 2], &[]),
            (&[], &[]),
            (&[1, 1], &[1]),
            (&[4, 1, 5, 1, 2], &[3, 1, 1, 2]),
            (&[0, 3], &[3]),
            (&[2, 0, 3], &[1, 1, 3]),
            // Large enough to go parallel, with runs split across chunks.
            (&[3, 333, 97], &[3, 1, 97]),
            (&[3, 333, 97], &[3, 333, 1]),
            (&[70_000], &[70_000]),
            (&[700, 1, 100], &[1, 99, 1]),
        ];
        for (i, &(ad, bd)) in cases.iter().enumerate() {
            let a = rand_vec(ad.iter().product(), 10 + i as u32, 3.0);
            let b = rand_vec(bd.iter().product(), 100 + i as u32, 3.0);
            let od = broadcast_dims(ad, bd).unwrap();
            type Op = (BinaryOp, fn(f32, f32) -> f32);
            let ops: [Op; 4] = [
                (BinaryOp::Add, |x, y| x + y),
                (BinaryOp::Sub, |x, y| x - y),
                (BinaryOp::Mul, |x, y| x * y),
                (BinaryOp::Div, |x, y| x / y),
            ];
            for (op, f) in ops {
                let mut out = vec![f32::NAN; od.iter().product()];
                binary(op, &a, ad, &b, bd, &mut out, &od);
                let want = binary_ref(&a, ad, &b, bd, f);
                assert!(
                    out.iter()
                        .zip(&want)
                        .all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{op:?} {ad:?} {bd:?}"
                );
            }
        }
    }

    /// A broadcast pair: `out` dims, and for each input a suffix of them with some dims set to 1.
    fn broadcast_case() -> impl proptest::strategy::Strategy<Value = (Vec<usize>, Vec<usize>)> {
        use proptest::prelude::*;
        (prop::collection::vec(0usize..5, 0..5), any::<u64>()).prop_map(|(out, bits)| {
            let pick = |shift: u32| {
                let keep = (bits >> shift) as usize % (out.len() + 1);
                out[out.len() - keep..]
                    .iter()
                    .enumerate()
                    .map(|(i, &d)| {
                        if (bits >> (shift + 8 + i as u32)) & 1 == 1 {
                            1
                        } else {
                            d
                        }
                    })
                    .collect::<Vec<usize>>()
            };
            (pick(0), pick(24))
        })
    }

    proptest::proptest! {
        #[test]
        fn binary_matches_reference_on_random_shapes((ad, bd) in broadcast_case(), seed in 0u32..1000) {
            let od = broadcast_dims(&ad, &bd).unwrap();
            let a = rand_vec(ad.iter().product(), seed, 2.0);
            let b = rand_vec(bd.iter().product(), seed + 1, 2.0);
            let mut out = vec![f32::NAN; od.iter().product()];
            binary(BinaryOp::Sub, &a, &ad, &b, &bd, &mut out, &od);
            let want = binary_ref(&a, &ad, &b, &bd, |x, y| x - y);
            proptest::prop_assert!(out.iter().zip(&want).all(|(x, y)| x.to_bits() == y.to_bits()));
        }
    }

    #[test]
    fn unary_ops_match_scalar_functions() {
        let x = rand_vec(100_003, 3, 5.0);
        let check = |op: UnaryOp, f: &dyn Fn(f32) -> f32| {
            let mut out = vec![0.0; x.len()];
            unary(op, &x, &mut out);
            assert!(
                out.iter()
                    .zip(&x)
                    .all(|(o, &v)| o.to_bits() == f(v).to_bits()),
                "{op:?}"
            );
        };
        check(UnaryOp::Abs, &|v| v.abs());
        check(UnaryOp::Sqr, &|v| v * v);
        check(UnaryOp::Sqrt, &|v| v.sqrt());
        check(
            UnaryOp::Affine {
                mul: 1.5,
                add: -0.25,
            },
            &|v| v * 1.5 - 0.25,
        );
        check(
            UnaryOp::Clamp {
                min: -1.0,
                max: 2.0,
            },
            &|v| v.clamp(-1.0, 2.0),
        );
        check(UnaryOp::Silu, &silu);
        check(UnaryOp::GeluTanh, &gelu_tanh);
        check(UnaryOp::GeluErf, &gelu_erf);
        check(UnaryOp::Tanh, &tanh);
        check(UnaryOp::Exp, &exp);
    }
}
