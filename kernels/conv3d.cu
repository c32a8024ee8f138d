// The VAE's 3-D convolution as an implicit GEMM on the tensor cores (mma.sync m16n8k16, bf16 in,
// f32 accumulate): out[co, p] = bias[co] + sum_k W[co, k] · X[k, p], with M = Cout, N = every
// output position of every batch entry, K = Cin·kt·kh·kw, and X the im2col matrix of the
// zero-padded input, gathered on the fly (never stored).
//
// Tile: a block of 128 threads (4 warps, 2×2) computes 64 output channels × 64 positions and
// walks K in steps of 32. Each warp owns a 32×32 corner: 2 m16 × 4 n8 mma tiles, 32 f32
// accumulators per thread, which leaves room for the gather's index arithmetic without spills
// on any architecture. The VAE's convs have Cout 96..384 (a multiple of 64 except the 3- and
// 32-channel heads, handled by bounds checks) and K up to 384·27 = 10368, so the work is in the
// K loop: per step each thread stages 16 weights (one row run of the [Cout, K] matrix, cached
// in L2 across blocks) and 16 im2col values of one output column (consecutive threads take
// consecutive positions, so the gathers of a warp read consecutive input columns). The block
// stages both tiles through shared memory once per step (one sync pair per 32·64·64 MACs). A
// multi-stage cp.async pipeline would hide more latency, but the gather needs per-element
// bounds and padding checks that cp.async's 16-byte copies cannot express; this tiling is the
// simpler one that keeps the tensor cores busy at the VAE's large K, and is what the CPU
// emulation reproduces (bf16 inputs, weights and bias; f32 sums; one bf16 rounding of the out).
#include "common.cuh"

namespace {
constexpr int BM = 64, BN = 64, BK = 32;
// Row stride of the shared tiles in bf16: 32 + 8 keeps the fragment loads of a warp on 32
// distinct banks (20 words per row: rows g = 0..7 start 20·g mod 32 apart, plus t = 0..3).
constexpr int LDS = BK + 8;

struct Geometry {
    int cin, t, h, w;          // input
    int cout, kt, kh, kw;      // kernel
    int st, sh, sw, pt, ph, pw; // stride and padding
    int ot, oh, ow;            // output
};
}  // namespace

extern "C" __global__ void __launch_bounds__(128)
    conv3d_implicit_gemm_bf16(const bf16_bits *__restrict__ x, const bf16_bits *__restrict__ wt,
                              const bf16_bits *__restrict__ bias, bf16_bits *__restrict__ out,
                              Geometry g, int batch) {
    __shared__ __align__(16) bf16_bits As[BM * LDS];
    __shared__ __align__(16) bf16_bits Bs[BN * LDS];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int k_taps = g.kt * g.kh * g.kw;
    const int K = g.cin * k_taps;
    const long long positions = static_cast<long long>(g.ot) * g.oh * g.ow;
    const long long n_total = positions * batch;
    const int m0 = blockIdx.y * BM;
    const long long n0 = static_cast<long long>(blockIdx.x) * BN;

    // This thread's im2col column (one output position) and its half of the K step.
    const int col = tid & (BN - 1), khalf = (tid >> 6) * (BK / 2);
    const long long n = n0 + col;
    const bool col_valid = n < n_total;
    int it0 = 0, ih0 = 0, iw0 = 0;
    const bf16_bits *xb = x;
    if (col_valid) {
        const long long b = n / positions;
        long long p = n - b * positions;
        const int ow_ = static_cast<int>(p % g.ow);
        p /= g.ow;
        const int oh_ = static_cast<int>(p % g.oh);
        const int ot_ = static_cast<int>(p / g.oh);
        it0 = ot_ * g.st - g.pt;
        ih0 = oh_ * g.sh - g.ph;
        iw0 = ow_ * g.sw - g.pw;
        xb = x + b * g.cin * static_cast<long long>(g.t) * g.h * g.w;
    }
    // This thread's weight run: row `arow`, 16 consecutive k.
    const int arow = tid >> 1, acol = (tid & 1) * (BK / 2);

    float acc[2][4][4];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.0f;

    const int wm = (warp >> 1) * 32, wn = (warp & 1) * 32;
    const int gq = lane >> 2, tq = lane & 3;
    for (int k0 = 0; k0 < K; k0 += BK) {
        {
            const int co = m0 + arow;
            const bf16_bits *wrow = wt + static_cast<long long>(co) * K;
#pragma unroll
            for (int i = 0; i < BK / 2; i += 2) {
                const int k = k0 + acol + i;
                const bf16_bits v0 = (co < g.cout && k < K) ? wrow[k] : 0;
                const bf16_bits v1 = (co < g.cout && k + 1 < K) ? wrow[k + 1] : 0;
                *reinterpret_cast<uint32_t *>(&As[arow * LDS + acol + i]) =
                    static_cast<uint32_t>(v0) | (static_cast<uint32_t>(v1) << 16);
            }
        }
        {
            int k = k0 + khalf;
            // Decompose k once, then step the tap (dw, dh, dt, ci) like an odometer.
            int ci = k / k_taps, r = k - ci * k_taps;
            int dt = r / (g.kh * g.kw);
            r -= dt * g.kh * g.kw;
            int dh = r / g.kw, dw = r - dh * g.kw;
#pragma unroll 2
            for (int i = 0; i < BK / 2; i += 2) {
                bf16_bits v[2];
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int ti = it0 + dt, hi = ih0 + dh, wi = iw0 + dw;
                    const bool in = col_valid && k + e < K && ti >= 0 && ti < g.t && hi >= 0 &&
                                    hi < g.h && wi >= 0 && wi < g.w;
                    v[e] = in ? xb[((static_cast<long long>(ci) * g.t + ti) * g.h + hi) * g.w + wi]
                              : 0;
                    if (++dw == g.kw) {
                        dw = 0;
                        if (++dh == g.kh) {
                            dh = 0;
                            if (++dt == g.kt) {
                                dt = 0;
                                ++ci;
                            }
                        }
                    }
                }
                *reinterpret_cast<uint32_t *>(&Bs[col * LDS + khalf + i]) =
                    static_cast<uint32_t>(v[0]) | (static_cast<uint32_t>(v[1]) << 16);
                k += 2;
            }
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < BK; kk += 16) {
            uint32_t a[2][4], b[4][2];
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                const bf16_bits *base = &As[(wm + i * 16 + gq) * LDS + kk + 2 * tq];
                a[i][0] = *reinterpret_cast<const uint32_t *>(base);
                a[i][1] = *reinterpret_cast<const uint32_t *>(base + 8 * LDS);
                a[i][2] = *reinterpret_cast<const uint32_t *>(base + 8);
                a[i][3] = *reinterpret_cast<const uint32_t *>(base + 8 * LDS + 8);
            }
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const bf16_bits *base = &Bs[(wn + j * 8 + gq) * LDS + kk + 2 * tq];
                b[j][0] = *reinterpret_cast<const uint32_t *>(base);
                b[j][1] = *reinterpret_cast<const uint32_t *>(base + 8);
            }
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) mma_bf16_16816(acc[i][j], a[i], b[j][0], b[j][1]);
        }
        __syncthreads();
    }

    // c0, c1: row gq, columns 2tq, 2tq + 1; c2, c3: row gq + 8.
#pragma unroll
    for (int i = 0; i < 2; ++i) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int co = m0 + wm + i * 16 + gq + half * 8;
            if (co >= g.cout) continue;
            const float bv = bf16_to_float(bias[co]);
#pragma unroll
            for (int j = 0; j < 4; ++j) {
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const long long nn = n0 + wn + j * 8 + 2 * tq + e;
                    if (nn >= n_total) continue;
                    const long long b = nn / positions, p = nn - b * positions;
                    out[(b * g.cout + co) * positions + p] =
                        float_to_bf16(acc[i][j][half * 2 + e] + bv);
                }
            }
        }
    }
}
