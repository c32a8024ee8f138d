// 8-bit attention (SageAttention2 class): out = softmax(scale · q kᵀ) v per (batch, head) with
// Q·Kᵀ in INT8 and P·V in fp16 or FP8 e4m3, f32 accumulation and online softmax; bf16 in and out,
// q/out [B, Lq, H, D], k/v [B, Lk, H, D], D = 64 or 128, non-causal, any lengths. Two schemes of
// src/backend/cpu/attention_q8.rs, which emulates both on the CPU:
//   - `Q8Path::Sm80`, fp16 P·V (attention_q8_hd*): runs on sm_80, sm_86, sm_89 and sm_90a (at
//     head_dim 128 sm_90a takes the wgmma kernel of attention_q8_sm90.cu on this file's pre-pass);
//   - `Q8Path::Sm89`, e4m3 P·V (attention_q8_fp8_hd*): needs the e4m3 mma.sync of sm_89+ (on
//     sm_80/86 its e4m3 MMA traps; the launcher refuses those devices before launching).
//
// The fp16 path's kernels, launched in order by src/backend/cuda/kernels/attention_q8.rs:
//   1. q8_stats: per (batch, head) and channel, the sums of k and v over the sequence (f64
//      atomics into a zeroed buffer). Grid (token chunks, H, B), one thread per channel walking
//      STATS_ROWS tokens (coalesced: a warp reads 64 consecutive bytes of a row).
//   2. q8_means: the K and V means (the smoothing), rounded to f32. Grid (H, B).
//   3. q8_quantize_q / q8_quantize_kv: one warp per token row: q · (scale·log2 e) and k − mean
//      to INT8 with one scale per token (amax/127, round to nearest even), v − mean to f16
//      (saturating). Outputs are head-major [B, H, L, D] so that the attention kernel's tiles
//      are contiguous rows.
//   4. attention_q8_hd{64,128}: the FlashAttention-2 loop of attention.cu with INT8 operands.
// The e4m3 path: q8_stats, q8_means, then q8_vamax (the per-channel max |v − mean|, the V
// scales), q8_quantize_q, q8_quantize_kv without V, q8_quantize_v_fp8 (V to e4m3, transposed),
// attention_q8_fp8_hd{64,128}.

// Attention tile: 4 warps own BLOCK_M = 64 queries (16 rows per warp, the M of mma m16n8k32)
// and walk keys in tiles of BLOCK_N = 64, as attention.cu (the emulation's tile_k is 64):
//   - Q is staged once through sK and kept as INT8 A fragments: D/32 × 4 registers (16 at
//     D = 128, half of the bf16 kernel's).
//   - S = Q Kᵀ: mma.sync m16n8k32 s8·s8 → s32, 8 n-tiles × 4 registers; each logit is
//     dequantized as float(acc) · (q_scale · k_scale) (per-token scales: each thread holds its
//     two rows' Q scales, the tile's 64 K scales sit in shared memory, double-buffered), masked
//     keys get -inf.
//   - Online softmax in base 2 as attention.cu; P = exp2(s − max) rounded to f16 and the row sum
//     taken over the rounded values (so the weights are exactly normalised), reused from the S
//     registers as the A fragments of mma m16n8k16 f16 → f32 accumulating straight into O.
//   - V (f16) via ldmatrix.trans; K (INT8, rows padded by 16 bytes) and V (rows padded by 8 f16)
//     by cp.async, single-buffered and interleaved as in attention.cu: 64·(D+16) + 64·(D+8)·2 +
//     2·64·4 bytes = 27 KB of static shared memory at D = 128.
// Registers: 16 (Q) + 32 (S) + 64 (O) at D = 128, plus the softmax state, the scales and the
// addresses: ptxas takes 188 with no spill under `__launch_bounds__(128, 2)` (two blocks, 8 warps
// per SM; capped at 168 for three blocks as attention.cu, it spilled on sm_90a). At D = 64 about
// 140, so three blocks per SM as attention.cu.
//
// The e4m3 variant (FP8 = true) keeps the tile, the Q·Kᵀ and the softmax, and changes P·V to
// SageAttention2's sm_89 scheme:
//   - P = 2^(s − m + 8.807) rounded to e4m3 (so P fills (0, 448]); the row sum is over the
//     rounded P. P is packed from the S registers straight into the A fragments of
//     mma m16n8k32 e4m3 (8 registers for the 64 keys).
//   - V (smoothed) is quantized per channel, v · 448/amax_c to e4m3, by the pre-pass, which also
//     transposes it to [B, H, D, L rounded up to 64] (the 8-bit B fragment holds 4 consecutive
//     keys of one channel, which ldmatrix without .trans reads from channel rows) and permutes
//     the keys inside each group of 16 to the order in which the C fragment of S holds them as
//     an A fragment (k-position 4·(lane%4) + i is key 2·(lane%4) + i for i < 2, key
//     8 + 2·(lane%4) + i − 2 otherwise); padded keys are zero. Rows of 64 bytes padded to 80.
//   - Two-level accumulation, as the emulation: the e4m3 MMA keeps only an FP22 accumulator, so
//     each 8-column n-tile of O gets a fresh 4-register accumulator for the key tile's two MMAs
//     (k = 32 each) and is then flushed into the f32 O as o·c + acc (the softmax correction
//     folded into the flush). Looping over n-tiles outside the MMAs costs 4 registers instead
//     of a second 64-register O. ptxas takes 236 registers at D = 128 on sm_89 (201 on
//     sm_90a), no spill, under the same bounds as the fp16 variant (two blocks per SM; three at
//     D = 64, 167 registers).
#include "common.cuh"
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#define BLOCK_M 64
#define BLOCK_N 64
#define WARPS 4
// Tokens one q8_stats block walks.
#define STATS_ROWS 128
// log2(448) as SageAttention writes it: P = 2^(s − m + P_E4M3_OFFSET) ≤ 447.86.
#define P_E4M3_OFFSET 8.807f

// Per (b, h): sums [2][D] f64 (k, v), zeroed by the launcher. blockDim.x = D.
extern "C" __global__ void q8_stats(const bf16_bits *__restrict__ k,
                                    const bf16_bits *__restrict__ v, double *__restrict__ sums,
                                    int L, int H) {
    const int D = blockDim.x, c = threadIdx.x, h = blockIdx.y, b = blockIdx.z;
    const int row0 = blockIdx.x * STATS_ROWS;
    const long long row_stride = static_cast<long long>(H) * D;
    double ks = 0.0, vs = 0.0;
    for (int r = row0; r < row0 + STATS_ROWS && r < L; ++r) {
        const long long at = (static_cast<long long>(b) * L + r) * row_stride + h * D + c;
        ks += bf16_to_float(k[at]);
        vs += bf16_to_float(v[at]);
    }
    const long long bh = static_cast<long long>(b) * H + h;
    atomicAdd(sums + bh * 2 * D + c, ks);
    atomicAdd(sums + bh * 2 * D + D + c, vs);
}

// Per (b, h) and channel: means [2][D] f32 = the K and V means, each sum / L rounded to f32 (as
// the emulation's `subtract_mean`). blockDim.x = D.
extern "C" __global__ void q8_means(const double *__restrict__ sums, float *__restrict__ means,
                                    int L, int H) {
    const int D = blockDim.x, c = threadIdx.x;
    const long long bh = static_cast<long long>(blockIdx.y) * H + blockIdx.x;
    means[bh * 2 * D + c] = static_cast<float>(sums[bh * 2 * D + c] / L);
    means[bh * 2 * D + D + c] = static_cast<float>(sums[bh * 2 * D + D + c] / L);
}

// Per (b, h) and channel: amax_bits [D] = the bits of max |v − mean| over the sequence (the
// emulation's `channel_amax` after the V smoothing), by atomicMax on non-negative floats' bits
// into a zeroed buffer. Grid (token chunks, H, B), blockDim.x = D.
extern "C" __global__ void q8_vamax(const bf16_bits *__restrict__ v,
                                    const float *__restrict__ means,
                                    unsigned *__restrict__ amax_bits, int L, int H) {
    const int D = blockDim.x, c = threadIdx.x, h = blockIdx.y, b = blockIdx.z;
    const int row0 = blockIdx.x * STATS_ROWS;
    const long long row_stride = static_cast<long long>(H) * D;
    const long long bh = static_cast<long long>(b) * H + h;
    const float mean = means[bh * 2 * D + D + c];
    float m = 0.0f;
    for (int r = row0; r < row0 + STATS_ROWS && r < L; ++r)
        m = fmaxf(m, fabsf(bf16_to_float(v[(static_cast<long long>(b) * L + r) * row_stride +
                                            h * D + c]) -
                           mean));
    atomicMax(amax_bits + bh * D + c, __float_as_uint(m));
}

// The e4m3 multiplier of a V channel whose max |v − mean| is `amax`: 448 / amax (0 for an
// all-zero channel), as the emulation's `quant8::scales`.
__device__ __forceinline__ float v_e4m3_inv(float amax) {
    return amax > 0.0f ? __fdiv_rn(448.0f, amax) : 0.0f;
}

// One f32 through e4m3 (round to nearest even, saturating at ±448) and back.
__device__ __forceinline__ float round_e4m3(float x) {
    const __half_raw h =
        __nv_cvt_fp8_to_halfraw(__nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3), __NV_E4M3);
    return __half2float(__half(h));
}

// Keys per V^T tile of the e4m3 path (= BLOCK_N) and its shared row stride in bytes.
#define VT_KEYS 64
#define VT_STRIDE (VT_KEYS + 16)

// The position of key r (0..63) of a tile in the V^T row: keys permuted inside each group of 16
// to the k order of the P A fragments (see the e4m3 variant's notes above).
__device__ __forceinline__ int vt_position(int r) {
    return (r & ~15) + 4 * ((r & 7) >> 1) + (r & 1) + ((r >> 3 & 1) << 1);
}

// v [B, L, H, D] bf16 → vt8 [B, H, D, Lpad] e4m3 (Lpad = L rounded up to 64): (v − mean) ·
// 448/amax_c, keys permuted by vt_position, zeros past L. Grid (Lpad / 64, H, B), 256 threads,
// one 64-key tile per block transposed through shared memory.
extern "C" __global__ void q8_quantize_v_fp8(const bf16_bits *__restrict__ v,
                                             const float *__restrict__ means,
                                             const float *__restrict__ v_amax,
                                             uint8_t *__restrict__ vt8, int L, int H, int D) {
    __shared__ __align__(16) uint8_t sT[128 * VT_STRIDE];
    const int h = blockIdx.y, b = blockIdx.z, key0 = blockIdx.x * VT_KEYS;
    const long long bh = static_cast<long long>(b) * H + h;
    const long long row_stride = static_cast<long long>(H) * D;
    const float *vmean = means + bh * 2 * D + D;
    for (int i = threadIdx.x; i < VT_KEYS * D; i += blockDim.x) {
        const int r = i / D, c = i % D, key = key0 + r;
        float x = 0.0f;
        if (key < L)
            x = __fmul_rn(__fsub_rn(bf16_to_float(v[(static_cast<long long>(b) * L + key) *
                                                         row_stride +
                                                     h * D + c]),
                                    vmean[c]),
                          v_e4m3_inv(v_amax[bh * D + c]));
        sT[c * VT_STRIDE + vt_position(r)] = __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3);
    }
    __syncthreads();
    const int lpad = (L + VT_KEYS - 1) / VT_KEYS * VT_KEYS;
    for (int i = threadIdx.x; i < D * (VT_KEYS / 16); i += blockDim.x) {
        const int c = i / (VT_KEYS / 16), col = (i % (VT_KEYS / 16)) * 16;
        *reinterpret_cast<uint4 *>(vt8 + (bh * D + c) * lpad + key0 + col) =
            *reinterpret_cast<const uint4 *>(sT + c * VT_STRIDE + col);
    }
}

// Values per lane of a row of D ≤ 128 channels (one warp per row).
#define MAX_PER_LANE 4

// One row of `n` values per lane (channels lane·n ..) to INT8 with the row's scale.
__device__ __forceinline__ void quantize_row(const float (&x)[MAX_PER_LANE], int n, int8_t *dst,
                                             float *scale) {
    float amax = 0.0f;
#pragma unroll
    for (int i = 0; i < MAX_PER_LANE; ++i)
        if (i < n) amax = fmaxf(amax, fabsf(x[i]));
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
#pragma unroll
    for (int i = 0; i < MAX_PER_LANE; ++i)
        if (i < n) dst[i] = static_cast<int8_t>(min(max(__float2int_rn(x[i] * inv), -127), 127));
    if ((threadIdx.x & 31) == 0) *scale = amax > 0.0f ? amax / 127.0f : 0.0f;
}

// Token rows per quantization block (one warp each).
#define QUANT_ROWS 8

// q [B, L, H, D] bf16 → q8 [B, H, L, D] INT8 and q_scale [B, H, L]: q · qmul per token.
// Grid (⌈L / 8⌉, H, B), 256 threads.
extern "C" __global__ void q8_quantize_q(const bf16_bits *__restrict__ q, int8_t *__restrict__ q8,
                                         float *__restrict__ q_scale, int L, int H, int D,
                                         float qmul) {
    const int lane = threadIdx.x & 31, h = blockIdx.y, b = blockIdx.z;
    const int r = blockIdx.x * QUANT_ROWS + (threadIdx.x >> 5);
    if (r >= L) return;
    const int n = D / 32, c0 = lane * n;
    const bf16_bits *src = q + ((static_cast<long long>(b) * L + r) * H + h) * D + c0;
    float x[MAX_PER_LANE];
#pragma unroll
    for (int i = 0; i < MAX_PER_LANE; ++i)
        if (i < n) x[i] = bf16_to_float(src[i]) * qmul;
    const long long row = (static_cast<long long>(b) * H + h) * L + r;
    quantize_row(x, n, q8 + row * D + c0, q_scale + row);
}

// k, v [B, L, H, D] bf16 → k8 [B, H, L, D] INT8, k_scale [B, H, L], v16 [B, H, L, D] f16:
// k − mean per token to INT8, v − mean to f16 saturating; V is skipped when v16 is null (the
// e4m3 path quantizes it in q8_quantize_v_fp8). Grid (⌈L / 8⌉, H, B).
extern "C" __global__ void q8_quantize_kv(const bf16_bits *__restrict__ k,
                                          const bf16_bits *__restrict__ v,
                                          const float *__restrict__ means,
                                          int8_t *__restrict__ k8, float *__restrict__ k_scale,
                                          __half *__restrict__ v16, int L, int H, int D) {
    const int lane = threadIdx.x & 31, h = blockIdx.y, b = blockIdx.z;
    const int r = blockIdx.x * QUANT_ROWS + (threadIdx.x >> 5);
    if (r >= L) return;
    const int n = D / 32, c0 = lane * n;
    const long long bh = static_cast<long long>(b) * H + h;
    const long long at = ((static_cast<long long>(b) * L + r) * H + h) * D + c0;
    const float *kmean = means + bh * 2 * D + c0, *vmean = kmean + D;
    const long long row = bh * L + r;
    float x[MAX_PER_LANE];
#pragma unroll
    for (int i = 0; i < MAX_PER_LANE; ++i) {
        if (i >= n) break;
        x[i] = bf16_to_float(k[at + i]) - kmean[i];
        if (v16 == nullptr) continue;
        const float y = bf16_to_float(v[at + i]) - vmean[i];
        v16[row * D + c0 + i] = __float2half_rn(fminf(fmaxf(y, -65504.0f), 65504.0f));
    }
    quantize_row(x, n, k8 + row * D + c0, k_scale + row);
}

// c += a·b for a 16x32 INT8 A (row), a 32x8 INT8 B (col) and a 16x8 s32 C.
__device__ __forceinline__ void mma_s8_16832(int c[4], const uint32_t a[4], uint32_t b0,
                                             uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, "
                 "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// c += a·b for a 16x32 e4m3 A (row), a 32x8 e4m3 B (col) and a 16x8 f32 C (sm_89+; the
// hardware keeps an FP22 accumulator). Traps where the instruction does not exist.
__device__ __forceinline__ void mma_e4m3_16832(float c[4], const uint32_t a[4], uint32_t b0,
                                               uint32_t b1) {
#if __CUDA_ARCH__ >= 890
    asm volatile("mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0, %1, %2, %3}, "
                 "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
    __trap();
#endif
}

// Four values already on the e4m3 grid in one register, `a` in the low byte.
__device__ __forceinline__ uint32_t pack_e4m3x4(float a, float b, float c, float d) {
    const uint32_t lo = __nv_cvt_float2_to_fp8x2(make_float2(a, b), __NV_SATFINITE, __NV_E4M3);
    const uint32_t hi = __nv_cvt_float2_to_fp8x2(make_float2(c, d), __NV_SATFINITE, __NV_E4M3);
    return lo | (hi << 16);
}

// One 64-query block. FP8: e4m3 P·V from vt8 (v_amax the V channels' maxima), else fp16 P·V
// from v16 (v_amax unused).
template <int D, bool FP8>
__device__ __forceinline__ void attention_q8_block(
    const int8_t *__restrict__ q8, const float *__restrict__ q_scale,
    const int8_t *__restrict__ k8, const float *__restrict__ k_scale, const void *__restrict__ v,
    const float *__restrict__ v_amax, const float *__restrict__ means,
    bf16_bits *__restrict__ out, int Lq, int Lk, int H) {
    constexpr int KSTRIDE = D + 16;      // padded INT8 row, in bytes
    constexpr int VSTRIDE = D + 8;       // padded f16 row, in halves
    constexpr int KCHUNKS = D / 16;      // 16-byte chunks per INT8 row
    constexpr int VCHUNKS = D / 8;       // 16-byte chunks per f16 row
    constexpr int KSTEPS = D / 32;       // k-steps of Q Kᵀ
    constexpr int S_TILES = BLOCK_N / 8; // n-tiles of S
    constexpr int O_TILES = D / 8;       // n-tiles of O
    __shared__ __align__(16) int8_t sK[BLOCK_N * KSTRIDE];
    // The f16 V tile, or the e4m3 V^T tile (D rows of VT_STRIDE bytes, smaller); then the output.
    __shared__ __align__(16) unsigned short sV[BLOCK_N * VSTRIDE];
    static_assert(D * VT_STRIDE <= sizeof(sV), "the V^T tile fits in sV");
    __shared__ float sKs[2][BLOCK_N];

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int m0 = blockIdx.x * BLOCK_M, h = blockIdx.y, b = blockIdx.z;
    const long long bh = static_cast<long long>(b) * H + h;
    const int8_t *qb = q8 + bh * Lq * D;
    const int8_t *kb = k8 + bh * Lk * D;
    const int lpad = (Lk + VT_KEYS - 1) / VT_KEYS * VT_KEYS; // keys per V^T row
    const char *vb = static_cast<const char *>(v) + bh * (FP8 ? D * lpad : Lk * D * 2);
    const float *ksb = k_scale + bh * Lk;

    // Rows row0.. of a head-major [len, D] tensor (`chunks` 16-byte chunks per row) into a
    // 64-row shared tile of `stride` bytes per row, zeros past `len`.
    auto load_tile = [&](void *s, int stride, const void *g, int chunks, int row0, int len) {
        for (int c = tid; c < BLOCK_N * chunks; c += WARPS * 32) {
            const int r = c / chunks, col = (c % chunks) * 16;
            const bool valid = row0 + r < len;
            const char *src = static_cast<const char *>(g) +
                              (valid ? static_cast<long long>(row0 + r) * chunks * 16 + col : 0);
            cp_async_16(static_cast<char *>(s) + r * stride + col, src, valid);
        }
    };
    auto load_k = [&](int j) {
        load_tile(sK, KSTRIDE, kb, KCHUNKS, j * BLOCK_N, Lk);
        if (tid < BLOCK_N) {
            const int key = j * BLOCK_N + tid;
            sKs[j & 1][tid] = key < Lk ? ksb[key] : 0.0f;
        }
    };
    auto load_v = [&](int j) {
        if (FP8) {
            for (int c = tid; c < D * (VT_KEYS / 16); c += WARPS * 32) {
                const int r = c / (VT_KEYS / 16), col = (c % (VT_KEYS / 16)) * 16;
                cp_async_16(reinterpret_cast<char *>(sV) + r * VT_STRIDE + col,
                            vb + static_cast<long long>(r) * lpad + j * VT_KEYS + col, true);
            }
        } else {
            load_tile(sV, VSTRIDE * 2, vb, VCHUNKS, j * BLOCK_N, Lk);
        }
    };

    // Q: staged through sK, then held as A fragments; its two rows' scales per thread.
    uint32_t qf[KSTEPS][4];
    load_tile(sK, KSTRIDE, qb, KCHUNKS, m0, Lq);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
#pragma unroll
    for (int ks = 0; ks < KSTEPS; ++ks)
        ldmatrix_x4(qf[ks], sK + (warp * 16 + (lane & 15)) * KSTRIDE + ks * 32 + (lane >> 4) * 16);
    __syncthreads();
    const int r0 = warp * 16 + (lane >> 2);
    float qs[2];
#pragma unroll
    for (int r = 0; r < 2; ++r)
        qs[r] = m0 + r0 + 8 * r < Lq ? q_scale[bh * Lq + m0 + r0 + 8 * r] : 0.0f;

    const int tiles = (Lk + BLOCK_N - 1) / BLOCK_N;
    if (tiles > 0) {
        load_k(0);
        cp_async_commit();
        load_v(0);
        cp_async_commit();
    }

    float o[O_TILES][4];
#pragma unroll
    for (int t = 0; t < O_TILES; ++t) o[t][0] = o[t][1] = o[t][2] = o[t][3] = 0.0f;
    float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f};

    for (int j = 0; j < tiles; ++j) {
        cp_async_wait<1>(); // K(j) has landed; V(j) may still be in flight
        __syncthreads();
        int acc[S_TILES][4];
#pragma unroll
        for (int t = 0; t < S_TILES; ++t) acc[t][0] = acc[t][1] = acc[t][2] = acc[t][3] = 0;
#pragma unroll
        for (int ks = 0; ks < KSTEPS; ++ks) {
#pragma unroll
            for (int t = 0; t < S_TILES; t += 2) {
                uint32_t kf[4];
                ldmatrix_x4(kf, sK + (t * 8 + (lane & 7) + (lane >> 4) * 8) * KSTRIDE + ks * 32 +
                                    ((lane >> 3) & 1) * 16);
                mma_s8_16832(acc[t], qf[ks], kf[0], kf[1]);
                mma_s8_16832(acc[t + 1], qf[ks], kf[2], kf[3]);
            }
        }
        // Dequantize (per-token scales) and mask; sKs[j & 1] stays valid until tile j + 2.
        const int col0 = (lane & 3) * 2;
        float s[S_TILES][4];
#pragma unroll
        for (int t = 0; t < S_TILES; ++t)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int col = t * 8 + col0 + (e & 1);
                s[t][e] = j * BLOCK_N + col < Lk
                              ? __int2float_rn(acc[t][e]) * (qs[e >> 1] * sKs[j & 1][col])
                              : -INFINITY;
            }
        __syncthreads(); // every warp is done with K(j)
        const bool more = j + 1 < tiles;
        if (more) {
            load_k(j + 1);
            cp_async_commit();
        }

        float correction[2];
        if (FP8) {
            online_softmax_tile(s, row_max, row_sum, correction, P_E4M3_OFFSET,
                                [](float p) { return round_e4m3(p); });
        } else {
            online_softmax_tile(s, row_max, row_sum, correction, 0.0f,
                                [](float p) { return __half2float(__float2half_rn(p)); });
            scale_rows(o, correction);
        }

        if (more)
            cp_async_wait<1>(); // V(j) has landed; K(j+1) may still be in flight
        else
            cp_async_wait<0>();
        __syncthreads();
        if (FP8) {
            // P as A fragments of k = 32 keys: the C fragments of S tiles 4kk .. 4kk + 3.
            uint32_t pf[BLOCK_N / 32][4];
#pragma unroll
            for (int kk = 0; kk < BLOCK_N / 32; ++kk)
#pragma unroll
                for (int r = 0; r < 4; ++r) {
                    const int t = 4 * kk + (r >> 1) * 2, e = (r & 1) * 2;
                    pf[kk][r] = pack_e4m3x4(s[t][e], s[t][e + 1], s[t + 1][e], s[t + 1][e + 1]);
                }
            const uint8_t *sVt = reinterpret_cast<const uint8_t *>(sV);
#pragma unroll
            for (int t = 0; t < O_TILES; ++t) {
                uint32_t vf[4];
                ldmatrix_x4(vf, sVt + (t * 8 + (lane & 7)) * VT_STRIDE + (lane >> 3) * 16);
                float acc8[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                // Without this, ptxas hoists all 16 V fragment loads above the MMAs: 255
                // registers and spills on sm_89 (236 and none with it).
                __syncwarp();
                mma_e4m3_16832(acc8, pf[0], vf[0], vf[1]);
                mma_e4m3_16832(acc8, pf[1], vf[2], vf[3]);
#pragma unroll
                for (int e = 0; e < 4; ++e)
                    o[t][e] = __fadd_rn(__fmul_rn(o[t][e], correction[e >> 1]), acc8[e]);
            }
        } else {
            pv_mma_16<true>(o, s, sV, VSTRIDE, lane);
        }
        __syncthreads(); // every warp is done with V(j)
        if (more) {
            load_v(j + 1);
            cp_async_commit();
        }
    }

    // o / l + V mean, staged as bf16 through sV, stored in 16-byte vectors of the valid rows.
    const float inv[2] = {row_sum[0] > 0.0f ? 1.0f / row_sum[0] : 0.0f,
                          row_sum[1] > 0.0f ? 1.0f / row_sum[1] : 0.0f};
    const float *vmean = means + bh * 2 * D + D;
    // o · (1 / l) · v_scale + mean, each step rounded as the emulation (v_scale = amax / 448 on
    // the e4m3 path).
    auto final_value = [&](float x, float inv_l, int col) {
        x = __fmul_rn(x, inv_l);
        if (FP8) {
            const float amax = v_amax[bh * D + col];
            x = __fmul_rn(x, amax > 0.0f ? __fdiv_rn(amax, 448.0f) : 0.0f);
        }
        return __fadd_rn(x, vmean[col]);
    };
#pragma unroll
    for (int t = 0; t < O_TILES; ++t) {
        const int col = t * 8 + (lane & 3) * 2;
        *reinterpret_cast<uint32_t *>(sV + r0 * VSTRIDE + col) = pack_bf16x2(
            final_value(o[t][0], inv[0], col), final_value(o[t][1], inv[0], col + 1));
        *reinterpret_cast<uint32_t *>(sV + (r0 + 8) * VSTRIDE + col) = pack_bf16x2(
            final_value(o[t][2], inv[1], col), final_value(o[t][3], inv[1], col + 1));
    }
    __syncthreads();
    const long long row_stride = static_cast<long long>(H) * D;
    bf16_bits *ob = out + static_cast<long long>(b) * Lq * row_stride + h * D;
    for (int c = tid; c < BLOCK_M * VCHUNKS; c += WARPS * 32) {
        const int r = c / VCHUNKS, col = (c % VCHUNKS) * 8;
        if (m0 + r < Lq)
            *reinterpret_cast<uint4 *>(ob + (m0 + r) * row_stride + col) =
                *reinterpret_cast<const uint4 *>(sV + r * VSTRIDE + col);
    }
}

// fp16 P·V (every GPU) and e4m3 P·V (sm_89+, traps elsewhere) entry points; v is v16 or vt8.
#define Q8_ENTRY(NAME, D, FP8, MIN_BLOCKS)                                                         \
    extern "C" __global__ void __launch_bounds__(WARPS * 32, MIN_BLOCKS)                           \
        NAME(const int8_t *__restrict__ q8, const float *__restrict__ q_scale,                     \
             const int8_t *__restrict__ k8, const float *__restrict__ k_scale,                     \
             const void *__restrict__ v, const float *__restrict__ v_amax,                         \
             const float *__restrict__ means, bf16_bits *__restrict__ out, int Lq, int Lk,         \
             int H) {                                                                              \
        attention_q8_block<D, FP8>(q8, q_scale, k8, k_scale, v, v_amax, means, out, Lq, Lk, H);    \
    }

Q8_ENTRY(attention_q8_hd64, 64, false, 3)
Q8_ENTRY(attention_q8_hd128, 128, false, 2)
Q8_ENTRY(attention_q8_fp8_hd64, 64, true, 3)
Q8_ENTRY(attention_q8_fp8_hd128, 128, true, 2)
