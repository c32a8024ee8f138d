// The sampler's kernels: the fused solver steps (UniPC, DPM++ 2M, Euler, LCM), the guidance
// combinations (CFG; CFG-Zero* with its chunked reduction), the non-finite check, and the seeded
// Philox4x32-10 Gaussian noise. f32 latents, f64 arithmetic.
//
// Bits: every kernel repeats the CPU's operations (src/sampler/kernels.rs, src/sampler/noise.rs)
// in the same order through the _rn intrinsics, which nvcc never contracts into an FMA, and
// rounds to f32 once where the CPU does, so its results equal the CPU backend's bit for bit.
//
// Tile: grid-stride loops, one element per thread per iteration: a warp reads and writes 128
// contiguous bytes of each operand (full lines), and a step reads each input and writes each
// output exactly once. The updates are bandwidth-bound even at sm_86/89's 1/64-rate f64 (about
// ten f64 operations per 8-20 bytes moved), so wider vectors would buy nothing. CFG-Zero*'s sums
// run one thread per 2^14-element chunk (the CPU's fixed chunks, each summed serially in order),
// then every block adds the chunk sums in chunk order itself, so the scalar never leaves the
// device and has the CPU's bits. The noise kernel gives one thread per Philox block of 4 values.
#include "common.cuh"

__device__ __forceinline__ double f64_add(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ double f64_sub(double a, double b) { return __dsub_rn(a, b); }
__device__ __forceinline__ double f64_mul(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ double f64_div(double a, double b) { return __ddiv_rn(a, b); }
__device__ __forceinline__ float to_f32(double a) { return __double2float_rn(a); }

#define GRID_STRIDE(i, n)                                                                          \
    for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n);     \
         i += static_cast<long long>(gridDim.x) * blockDim.x)

// `c_x·x − c_m·m`, the part every UniPC update shares.
__device__ __forceinline__ double unipc_base(double c_x, double c_m, double x, double m) {
    return f64_sub(f64_mul(c_x, x), f64_mul(c_m, m));
}

// One UniPC step. corrector: 0 none (start = x), 1 or 2 its order; predictor: 0 the x0
// prediction (last step to sigma 0), 1 or 2 its order. Unused inputs are not read.
// c = [sigma, cc_x, cc_m, cc_d, rho0, rho1, c_rk, pc_x, pc_m, pc_d, p_rk].
extern "C" __global__ void unipc_step_f32(const float *__restrict__ x, const float *__restrict__ v,
                                          const float *__restrict__ xl,
                                          const float *__restrict__ mp,
                                          const float *__restrict__ mpp, float *__restrict__ out,
                                          float *__restrict__ x0, float *__restrict__ start,
                                          long long n, int corrector, int predictor,
                                          double sigma, double cc_x, double cc_m, double cc_d,
                                          double rho0, double rho1, double c_rk, double pc_x,
                                          double pc_m, double pc_d, double p_rk) {
    GRID_STRIDE(i, n) {
        const float m = to_f32(f64_sub(x[i], f64_mul(sigma, v[i])));
        const double md = m;
        float xc = x[i];
        if (corrector != 0) {
            const double mpv = mp[i];
            const double base = unipc_base(cc_x, cc_m, xl[i], mpv);
            double d;
            if (corrector == 1) {
                d = f64_mul(0.5, f64_sub(md, mpv));
            } else {
                const double d1 = f64_div(f64_sub(mpp[i], mpv), c_rk);
                d = f64_add(f64_mul(rho0, d1), f64_mul(rho1, f64_sub(md, mpv)));
            }
            xc = to_f32(f64_sub(base, f64_mul(cc_d, d)));
        }
        float o = m;
        if (predictor != 0) {
            const double base = unipc_base(pc_x, pc_m, xc, md);
            o = predictor == 1
                    ? to_f32(base)
                    : to_f32(f64_sub(base, f64_mul(pc_d, f64_mul(0.5, f64_div(f64_sub(mp[i], md), p_rk)))));
        }
        out[i] = o;
        x0[i] = m;
        start[i] = xc;
    }
}

// One DPM++ 2M step: `(c_x·x)_f32 − c_m·m [− c_half·(inv_r0·(m − m_prev))]`.
extern "C" __global__ void dpm_step_f32(const float *__restrict__ x, const float *__restrict__ v,
                                        const float *__restrict__ mp, float *__restrict__ out,
                                        float *__restrict__ x0, long long n, int second,
                                        double c_x_wide, double sigma, double c_m,
                                        double c_half, double inv_r0) {
    const float c_x = static_cast<float>(c_x_wide); // an f32 value: exact
    GRID_STRIDE(i, n) {
        const float m = to_f32(f64_sub(x[i], f64_mul(sigma, v[i])));
        const double md = m;
        const double base = f64_sub(static_cast<double>(__fmul_rn(c_x, x[i])), f64_mul(c_m, md));
        out[i] = second ? to_f32(f64_sub(base, f64_mul(c_half, f64_mul(inv_r0, f64_sub(md, mp[i])))))
                        : to_f32(base);
        x0[i] = m;
    }
}

// One flow-matching Euler step `x + dt·v`.
extern "C" __global__ void euler_step_f32(const float *__restrict__ x,
                                          const float *__restrict__ v, float *__restrict__ out,
                                          long long n, double dt) {
    GRID_STRIDE(i, n) { out[i] = to_f32(f64_add(x[i], f64_mul(dt, v[i]))); }
}

// One LCM step: `x0 = x − σ·v`, then `(1 − next)·x0 + next·ε` when `renoise`.
extern "C" __global__ void lcm_step_f32(const float *__restrict__ x, const float *__restrict__ v,
                                        const float *__restrict__ eps, float *__restrict__ out,
                                        long long n, int renoise, double sigma, double next) {
    GRID_STRIDE(i, n) {
        const double x0 = f64_sub(x[i], f64_mul(sigma, v[i]));
        out[i] = renoise ? to_f32(f64_add(f64_mul(f64_sub(1.0, next), x0), f64_mul(next, eps[i]))) : to_f32(x0);
    }
}

// Classifier-free guidance `u + g·(c − u)`.
extern "C" __global__ void cfg_f32(const float *__restrict__ c, const float *__restrict__ u,
                                   float *__restrict__ out, long long n, double scale) {
    GRID_STRIDE(i, n) { out[i] = to_f32(f64_add(u[i], f64_mul(scale, f64_sub(c[i], u[i])))); }
}

// Elements per CFG-Zero* partial sum (the CPU's `PARTIAL`).
#define CFG_ZERO_STAR_CHUNK 16384

// partials[2k] = Σ c·u and partials[2k + 1] = Σ u·u over chunk k, each summed serially in order.
extern "C" __global__ void cfg_zero_star_partials_f32(const float *__restrict__ c,
                                                      const float *__restrict__ u,
                                                      double *__restrict__ partials, long long n) {
    const long long chunks = (n + CFG_ZERO_STAR_CHUNK - 1) / CFG_ZERO_STAR_CHUNK;
    GRID_STRIDE(k, chunks) {
        const long long first = k * CFG_ZERO_STAR_CHUNK;
        const long long last = min(n, first + CFG_ZERO_STAR_CHUNK);
        double dot = 0.0, norm = 0.0;
        for (long long i = first; i < last; ++i) {
            const double cv = c[i], uv = u[i];
            dot = f64_add(dot, f64_mul(cv, uv));
            norm = f64_add(norm, f64_mul(uv, uv));
        }
        partials[2 * k] = dot;
        partials[2 * k + 1] = norm;
    }
}

// `s*·u + g·(c − s*·u)` with `s* = Σ dot / (Σ norm + 1e-8)`, the chunk sums added in order.
extern "C" __global__ void cfg_zero_star_combine_f32(const float *__restrict__ c,
                                                     const float *__restrict__ u,
                                                     const double *__restrict__ partials,
                                                     float *__restrict__ out, long long n,
                                                     double scale) {
    __shared__ double st_shared;
    if (threadIdx.x == 0) {
        const long long chunks = (n + CFG_ZERO_STAR_CHUNK - 1) / CFG_ZERO_STAR_CHUNK;
        double dot = 0.0, norm = 0.0;
        for (long long k = 0; k < chunks; ++k) {
            dot = f64_add(dot, partials[2 * k]);
            norm = f64_add(norm, partials[2 * k + 1]);
        }
        st_shared = f64_div(dot, f64_add(norm, 1e-8));
    }
    __syncthreads();
    const double st = st_shared;
    GRID_STRIDE(i, n) {
        const double su = f64_mul(st, u[i]);
        out[i] = to_f32(f64_add(su, f64_mul(scale, f64_sub(c[i], su))));
    }
}

// flag = max over non-finite x[i] of n − i (0 when all are finite): the first one is n − flag.
extern "C" __global__ void first_non_finite_f32(const float *__restrict__ x,
                                                unsigned long long *__restrict__ flag,
                                                long long n) {
    GRID_STRIDE(i, n) {
        if (!isfinite(x[i])) atomicMax(flag, static_cast<unsigned long long>(n - i));
    }
}

// ------------------------------------------------------------------------- seeded noise
// src/sampler/noise.rs's generator: Philox4x32-10, then Box-Muller with ln, sin and cos from
// IEEE additions, multiplications and divisions only. The constants are given by their bits
// (the CPU's values; a CPU test reads these lines and compares).

// 1/n! for n = 0..18.
__constant__ unsigned long long INV_FACT_BITS[19] = {
    0x3ff0000000000000ull, 0x3ff0000000000000ull, 0x3fe0000000000000ull, 0x3fc5555555555555ull,
    0x3fa5555555555555ull, 0x3f81111111111111ull, 0x3f56c16c16c16c17ull, 0x3f2a01a01a01a01aull,
    0x3efa01a01a01a01aull, 0x3ec71de3a556c734ull, 0x3e927e4fb7789f5cull, 0x3e5ae64567f544e4ull,
    0x3e21eed8eff8d898ull, 0x3de6124613a86d09ull, 0x3da93974a8c07c9dull, 0x3d6ae7f3e733b81full,
    0x3d2ae7f3e733b81full, 0x3ce952c77030ad4aull, 0x3ca6827863b97d97ull};

// 1/(2k + 1) for k = 0..10.
__constant__ unsigned long long INV_ODD_BITS[11] = {
    0x3ff0000000000000ull, 0x3fd5555555555555ull, 0x3fc999999999999aull, 0x3fc2492492492492ull,
    0x3fbc71c71c71c71cull, 0x3fb745d1745d1746ull, 0x3fb3b13b13b13b14ull, 0x3fb1111111111111ull,
    0x3fae1e1e1e1e1e1eull, 0x3faaf286bca1af28ull, 0x3fa8618618618618ull};

#define LN_2_BITS 0x3fe62e42fefa39efull
#define SQRT_2_BITS 0x3ff6a09e667f3bcdull
#define TAU_BITS 0x401921fb54442d18ull
#define TWO_POW_M32_BITS 0x3df0000000000000ull

__device__ __forceinline__ double from_bits(unsigned long long b) {
    return __longlong_as_double(static_cast<long long>(b));
}

__device__ __forceinline__ void philox4x32_10(unsigned c[4], unsigned k0, unsigned k1) {
#pragma unroll
    for (int round = 0; round < 10; ++round) {
        if (round > 0) {
            k0 += 0x9E3779B9u;
            k1 += 0xBB67AE85u;
        }
        const unsigned long long p0 = 0xD2511F53ull * c[0];
        const unsigned long long p1 = 0xCD9E8D57ull * c[2];
        const unsigned n0 = static_cast<unsigned>(p1 >> 32) ^ c[1] ^ k0;
        const unsigned n2 = static_cast<unsigned>(p0 >> 32) ^ c[3] ^ k1;
        c[0] = n0;
        c[1] = static_cast<unsigned>(p1);
        c[2] = n2;
        c[3] = static_cast<unsigned>(p0);
    }
}

// ln x for a positive normal x: x = m·2^e, m in [√½, √2), ln m = 2·atanh(s), s = (m−1)/(m+1).
__device__ double ln_unit(double x) {
    const unsigned long long bits = static_cast<unsigned long long>(__double_as_longlong(x));
    long long e = static_cast<long long>((bits >> 52) & 0x7ff) - 1023;
    double m = from_bits((bits & ((1ull << 52) - 1)) | (1023ull << 52));
    if (m >= from_bits(SQRT_2_BITS)) {
        m = f64_mul(m, 0.5);
        e += 1;
    }
    const double s = f64_div(f64_sub(m, 1.0), f64_add(m, 1.0));
    const double s2 = f64_mul(s, s);
    double p = 0.0;
#pragma unroll
    for (int k = 10; k >= 0; --k) p = f64_add(f64_mul(p, s2), from_bits(INV_ODD_BITS[k]));
    return f64_add(f64_mul(static_cast<double>(e), from_bits(LN_2_BITS)), f64_mul(f64_mul(2.0, s), p));
}

// (sin 2πt, cos 2πt) for t in [0, 1): nearest quarter turn, Taylor series, rotation.
__device__ void sin_cos_turns(double t, double *sin_out, double *cos_out) {
    const double q = round(f64_mul(t, 4.0));
    const double a = f64_mul(f64_sub(t, f64_mul(q, 0.25)), from_bits(TAU_BITS));
    const double a2 = f64_mul(a, a);
    double s = 0.0, c = 0.0;
#pragma unroll
    for (int k = 9; k >= 0; --k) {
        const bool even = k % 2 == 0;
        if (k <= 8) {
            const double f = from_bits(INV_FACT_BITS[2 * k + 1]);
            s = f64_add(f64_mul(s, a2), even ? f : -f);
        }
        const double f = from_bits(INV_FACT_BITS[2 * k]);
        c = f64_add(f64_mul(c, a2), even ? f : -f);
    }
    s = f64_mul(a, s);
    switch (static_cast<unsigned>(q) % 4) {
    case 0: *sin_out = s; *cos_out = c; break;
    case 1: *sin_out = c; *cos_out = -s; break;
    case 2: *sin_out = -s; *cos_out = -c; break;
    default: *sin_out = -c; *cos_out = s; break;
    }
}

// Two N(0, 1) samples from two 32-bit words.
__device__ __forceinline__ void box_muller(unsigned a, unsigned b, float *z0, float *z1) {
    const double u = f64_mul(f64_add(static_cast<double>(a), 0.5), from_bits(TWO_POW_M32_BITS));
    const double r = __dsqrt_rn(f64_mul(-2.0, ln_unit(u)));
    double s, c;
    sin_cos_turns(f64_mul(static_cast<double>(b), from_bits(TWO_POW_M32_BITS)), &s, &c);
    *z0 = to_f32(f64_mul(r, c));
    *z1 = to_f32(f64_mul(r, s));
}

// Elements 0..n of stream (s0, s1) of seed (k0, k1): element k is lane k mod 4 of the Philox
// block with counter [k/4 (low, high), s0, s1].
extern "C" __global__ void philox_normal_f32(float *__restrict__ out, long long n, unsigned k0,
                                             unsigned k1, unsigned s0, unsigned s1) {
    const long long blocks = (n + 3) / 4;
    GRID_STRIDE(b, blocks) {
        unsigned c[4] = {static_cast<unsigned>(b), static_cast<unsigned>(b >> 32), s0, s1};
        philox4x32_10(c, k0, k1);
        float z[4];
        box_muller(c[0], c[1], &z[0], &z[1]);
        box_muller(c[2], c[3], &z[2], &z[3]);
#pragma unroll
        for (int lane = 0; lane < 4; ++lane) {
            if (4 * b + lane < n) out[4 * b + lane] = z[lane];
        }
    }
}
