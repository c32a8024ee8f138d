// Device helpers shared by the kernel files: bf16 bit conversions, 16-byte vector packs, block
// reductions, the sm_80+ instructions the attention kernels use (cp.async, ldmatrix, mma.sync),
// and the attention kernels' online softmax and 16-bit P·V steps.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

// bf16 values travel as their 16-bit patterns so that 16-byte vectors can be plain unions.
typedef unsigned short bf16_bits;

// Eight bf16 values: one 16-byte load or store.
union Pack8 {
    uint4 u;
    bf16_bits h[8];
};

// Four f32 values: one 16-byte load or store.
union Float4 {
    float4 v;
    float f[4];
};

__device__ __forceinline__ float bf16_to_float(bf16_bits b) {
    return __uint_as_float(static_cast<unsigned>(b) << 16);
}

// Round to nearest even; NaN stays NaN.
__device__ __forceinline__ bf16_bits float_to_bf16(float f) {
    return __bfloat16_as_ushort(__float2bfloat16_rn(f));
}

// Whether every pointer given is 16-byte aligned (vector paths need it; views may be offset).
__device__ __forceinline__ bool aligned16(const void *a, const void *b) {
    return ((reinterpret_cast<uintptr_t>(a) | reinterpret_cast<uintptr_t>(b)) & 15) == 0;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Sum over the whole block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
// `scratch` holds 32 floats; the function synchronises before returning and before reuse.
__device__ __forceinline__ float block_sum(float v, float *scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : 0.0f;
    return warp_sum(v);
}

// Copies 16 bytes global -> shared without staging in registers; `valid == false` writes zeros
// and reads nothing (the source must still be a mapped address).
__device__ __forceinline__ void cp_async_16(void *smem, const void *gmem, bool valid) {
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem),
                 "r"(valid ? 16 : 0));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

// Waits until at most `N` committed groups are still in flight.
template <int N> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Four 8x8 b16 matrices from shared memory; lane i gives the row address of matrix i/8, row i%8.
__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void *smem) {
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
}

// As ldmatrix_x4, each matrix transposed.
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const void *smem) {
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
}

// c += a·b for a 16x16 bf16 A (row), a 16x8 bf16 B (col) and a 16x8 f32 C.
__device__ __forceinline__ void mma_bf16_16816(float c[4], const uint32_t a[4], uint32_t b0,
                                               uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
                 "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two f32 rounded to bf16 in one register, `lo` in the low half (the mma operand order).
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
    return static_cast<uint32_t>(float_to_bf16(lo)) | (static_cast<uint32_t>(float_to_bf16(hi)) << 16);
}

// c += a·b for a 16x16 f16 A (row), a 16x8 f16 B (col) and a 16x8 f32 C.
__device__ __forceinline__ void mma_f16_16816(float c[4], const uint32_t a[4], uint32_t b0,
                                              uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
                 "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two f32 rounded to f16 in one register, `lo` in the low half (the mma operand order).
__device__ __forceinline__ uint32_t pack_f16x2(float lo, float hi) {
    return static_cast<uint32_t>(__half_as_ushort(__float2half_rn(lo))) |
           (static_cast<uint32_t>(__half_as_ushort(__float2half_rn(hi))) << 16);
}

// One key tile of the FlashAttention-2 online softmax, in base 2, for the two rows of an mma
// C fragment that a thread owns (rows lane/4 and lane/4 + 8; the 4 lanes of a row reduce by
// shuffles). `s` holds the tile's T n-tiles of logits (masked keys -inf) and becomes
// P = round(2^(s − (m' − offset))), with m' the new running max (the offset puts P's range
// where the P·V format wants it: 0 for f16/bf16, log2(448) for e4m3). `row_max` becomes m',
// `correction` c = 2^(m − m'), and `row_sum` l·c + Σ P over the rounded P (each step rounded
// as written, no fused multiply-add). The caller rescales its output by `correction`.
template <int T, typename Round>
__device__ __forceinline__ void online_softmax_tile(float (&s)[T][4], float (&row_max)[2],
                                                    float (&row_sum)[2], float (&correction)[2],
                                                    float offset, Round round) {
    float tile_max[2] = {row_max[0], row_max[1]}, tile_sum[2] = {0.0f, 0.0f};
#pragma unroll
    for (int t = 0; t < T; ++t)
#pragma unroll
        for (int e = 0; e < 4; ++e) tile_max[e >> 1] = fmaxf(tile_max[e >> 1], s[t][e]);
    float shift[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 1));
        tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 2));
        // Tile 0 always holds a valid key, so tile_max is finite and exp2(-inf) = 0.
        correction[r] = exp2f(row_max[r] - tile_max[r]);
        row_max[r] = tile_max[r];
        shift[r] = tile_max[r] - offset;
    }
#pragma unroll
    for (int t = 0; t < T; ++t)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            s[t][e] = round(exp2f(s[t][e] - shift[e >> 1]));
            tile_sum[e >> 1] += s[t][e];
        }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        tile_sum[r] += __shfl_xor_sync(0xffffffffu, tile_sum[r], 1);
        tile_sum[r] += __shfl_xor_sync(0xffffffffu, tile_sum[r], 2);
        row_sum[r] = __fadd_rn(__fmul_rn(row_sum[r], correction[r]), tile_sum[r]);
    }
}

// o += P·V over one key tile with the 16-bit m16n8k16 MMA (f16 when F16, else bf16): P the ST
// n-tiles of logits-turned-weights `s` (rows as online_softmax_tile, 16·ST/2 keys), rounded to
// the 16-bit type; V the tile's 16-bit rows in shared memory at `sV`, `stride` elements apart,
// read transposed with ldmatrix; `o` the OT n-tiles of the output fragment.
template <bool F16, int ST, int OT>
__device__ __forceinline__ void pv_mma_16(float (&o)[OT][4], const float (&s)[ST][4],
                                          const unsigned short *sV, int stride, int lane) {
    const auto pack = [](float lo, float hi) {
        return F16 ? pack_f16x2(lo, hi) : pack_bf16x2(lo, hi);
    };
#pragma unroll
    for (int kk = 0; kk < ST / 2; ++kk) {
        const uint32_t pf[4] = {pack(s[2 * kk][0], s[2 * kk][1]), pack(s[2 * kk][2], s[2 * kk][3]),
                                pack(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                pack(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
        for (int t = 0; t < OT; t += 2) {
            uint32_t vf[4];
            ldmatrix_x4_trans(vf, sV + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * stride +
                                      t * 8 + (lane >> 4) * 8);
            if (F16) {
                mma_f16_16816(o[t], pf, vf[0], vf[1]);
                mma_f16_16816(o[t + 1], pf, vf[2], vf[3]);
            } else {
                mma_bf16_16816(o[t], pf, vf[0], vf[1]);
                mma_bf16_16816(o[t + 1], pf, vf[2], vf[3]);
            }
        }
    }
}

// o *= c per row for the T n-tiles of an mma C fragment (rows as online_softmax_tile).
template <int T>
__device__ __forceinline__ void scale_rows(float (&o)[T][4], const float (&c)[2]) {
#pragma unroll
    for (int t = 0; t < T; ++t) {
        o[t][0] *= c[0];
        o[t][1] *= c[0];
        o[t][2] *= c[1];
        o[t][3] *= c[1];
    }
}
