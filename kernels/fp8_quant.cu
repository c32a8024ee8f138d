// Dynamic per-tensor e4m3fn quantization of bf16 activations for the fp8 GEMM (sm_89/sm_90;
// `src/backend/gemm_plan.rs` documents the choice and emulates the arithmetic on the CPU).
//
// Two passes, no host round trip: `absmax_bf16` reduces |x| into one f32 on the device, then
// `quantize_e4m3fn_bf16` turns it into the dequantization scale `amax / 448` (1 for an all-zero
// tensor), writes that scale for cuBLASLt's scale pointer, and encodes `x · (1 / scale)` with
// round-to-nearest-even and saturation (CUDA's satfinite conversion).
//
// Tile: grid-stride loops, 8 values per thread per step (one 16-byte bf16 load, one 8-byte code
// store), so every access is a coalesced vector access; unaligned views and the tail take the
// same arithmetic one value at a time. The max reduces in a warp by shuffles and leaves each
// block as one atomicMax on the f32's bits (non-negative floats order as their bit patterns).
#include "common.cuh"
#include <cuda_fp8.h>

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// `amax_bits` must hold 0 (the launcher clears it) before the launch.
extern "C" __global__ void absmax_bf16(const bf16_bits *__restrict__ x,
                                       unsigned *__restrict__ amax_bits, int n) {
    const int stride = gridDim.x * blockDim.x;
    const int first = blockIdx.x * blockDim.x + threadIdx.x;
    const int vectors = aligned16(x, x) ? n / 8 : 0;
    float m = 0.0f;
    for (int v = first; v < vectors; v += stride) {
        Pack8 p;
        p.u = reinterpret_cast<const uint4 *>(x)[v];
#pragma unroll
        for (int i = 0; i < 8; ++i) m = fmaxf(m, fabsf(bf16_to_float(p.h[i])));
    }
    for (int i = vectors * 8 + first; i < n; i += stride) m = fmaxf(m, fabsf(bf16_to_float(x[i])));
    m = warp_max(m);
    __shared__ float warps[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) warps[warp] = m;
    __syncthreads();
    if (warp == 0) {
        m = warp_max(lane < (blockDim.x >> 5) ? warps[lane] : 0.0f);
        if (lane == 0) atomicMax(amax_bits, __float_as_uint(m));
    }
}

__device__ __forceinline__ unsigned char e4m3fn_encode(float v) {
    return static_cast<unsigned char>(__nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3));
}

extern "C" __global__ void quantize_e4m3fn_bf16(const bf16_bits *__restrict__ x,
                                                const unsigned *__restrict__ amax_bits,
                                                float *__restrict__ scale_out,
                                                unsigned char *__restrict__ out, int n) {
    const float amax = __uint_as_float(*amax_bits);
    // Finite and positive, else 1 (the same rule as `gemm_plan::e4m3_scale`).
    const float scale = (amax > 0.0f && amax <= 3.402823466e38f) ? amax / 448.0f : 1.0f;
    const float inv = 1.0f / scale;
    const int stride = gridDim.x * blockDim.x;
    const int first = blockIdx.x * blockDim.x + threadIdx.x;
    if (first == 0) *scale_out = scale;
    const int vectors = aligned16(x, out) ? n / 8 : 0;
    for (int v = first; v < vectors; v += stride) {
        Pack8 p;
        p.u = reinterpret_cast<const uint4 *>(x)[v];
        uint2 codes = make_uint2(0u, 0u);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const unsigned c = e4m3fn_encode(bf16_to_float(p.h[i]) * inv);
            if (i < 4) codes.x |= c << (8 * i);
            else codes.y |= c << (8 * (i - 4));
        }
        reinterpret_cast<uint2 *>(out)[v] = codes;
    }
    for (int i = vectors * 8 + first; i < n; i += stride)
        out[i] = e4m3fn_encode(bf16_to_float(x[i]) * inv);
}
