// Typed value access for the kernels that take bf16 or f32 tensors (the dtypes CUDA activations
// have): a value widened to f32, an f32 rounded back, and runs of 8 values moved in 16-byte
// vectors (one for bf16, two for f32).
#pragma once

#include "common.cuh"

__device__ __forceinline__ float to_f32(bf16_bits v) { return bf16_to_float(v); }
__device__ __forceinline__ float to_f32(float v) { return v; }

template <typename T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ bf16_bits from_f32<bf16_bits>(float v) {
    return float_to_bf16(v);
}
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }

// 8 consecutive values from `p` (16-byte aligned) widened to f32.
__device__ __forceinline__ void load8(const bf16_bits *p, float v[8]) {
    Pack8 a;
    a.u = *reinterpret_cast<const uint4 *>(p);
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = bf16_to_float(a.h[i]);
}
__device__ __forceinline__ void load8(const float *p, float v[8]) {
    Float4 a, b;
    a.v = reinterpret_cast<const float4 *>(p)[0];
    b.v = reinterpret_cast<const float4 *>(p)[1];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        v[i] = a.f[i];
        v[i + 4] = b.f[i];
    }
}

// 8 f32 values stored to `p` (16-byte aligned) in its dtype.
__device__ __forceinline__ void store8(bf16_bits *p, const float v[8]) {
    Pack8 a;
#pragma unroll
    for (int i = 0; i < 8; ++i) a.h[i] = float_to_bf16(v[i]);
    *reinterpret_cast<uint4 *>(p) = a.u;
}
__device__ __forceinline__ void store8(float *p, const float v[8]) {
    Float4 a, b;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        a.f[i] = v[i];
        b.f[i] = v[i + 4];
    }
    reinterpret_cast<float4 *>(p)[0] = a.v;
    reinterpret_cast<float4 *>(p)[1] = b.v;
}

// The most dims a broadcast or strided-copy plan has after merging (the tensor ops allow any
// rank; the Rust planners merge dims and refuse plans that still need more).
#define MAX_RANK 8
