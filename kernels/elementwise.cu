// The DiT's element-wise kernels: the gated residual add and GELU (tanh), bf16 in and out, f32
// arithmetic.
//
// Tile: a grid-stride loop in which each thread handles 8 consecutive values per step, one
// 16-byte load per operand and one 16-byte store, so a warp moves 512 contiguous bytes per
// access (full 128-byte lines, no register pressure). When a pointer is not 16-byte aligned or
// a row is not a multiple of 8 long, the same loop runs on single values.
#include "common.cuh"

// x[r, c] += y[r, c] · gate[c] (the gate broadcast over rows).
extern "C" __global__ void gated_residual_add_bf16(bf16_bits *__restrict__ x,
                                                   const bf16_bits *__restrict__ y,
                                                   const float *__restrict__ gate, int rows,
                                                   int cols) {
    const long long n = static_cast<long long>(rows) * cols;
    const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
    const long long first = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (cols % 8 == 0 && aligned16(x, y) && aligned16(gate, gate)) {
        for (long long v = first; v < n / 8; v += stride) {
            Pack8 a, b;
            a.u = reinterpret_cast<const uint4 *>(x)[v];
            b.u = reinterpret_cast<const uint4 *>(y)[v];
            const int c0 = static_cast<int>((v * 8) % cols);
            Float4 g0, g1;
            g0.v = *reinterpret_cast<const float4 *>(gate + c0);
            g1.v = *reinterpret_cast<const float4 *>(gate + c0 + 4);
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                const float g = i < 4 ? g0.f[i] : g1.f[i - 4];
                a.h[i] = float_to_bf16(bf16_to_float(a.h[i]) + bf16_to_float(b.h[i]) * g);
            }
            reinterpret_cast<uint4 *>(x)[v] = a.u;
        }
    } else {
        for (long long i = first; i < n; i += stride) {
            const float g = gate[i % cols];
            x[i] = float_to_bf16(bf16_to_float(x[i]) + bf16_to_float(y[i]) * g);
        }
    }
}

__device__ __forceinline__ float gelu_tanh(float x) {
    const float k = 0.7978845608028654f; // sqrt(2/pi)
    return 0.5f * x * (1.0f + tanhf(k * (x + 0.044715f * x * x * x)));
}

extern "C" __global__ void gelu_tanh_bf16(const bf16_bits *__restrict__ x,
                                          bf16_bits *__restrict__ out, int n) {
    const int stride = gridDim.x * blockDim.x;
    const int first = blockIdx.x * blockDim.x + threadIdx.x;
    const int vectors = aligned16(x, out) ? n / 8 : 0;
    for (int v = first; v < vectors; v += stride) {
        Pack8 a;
        a.u = reinterpret_cast<const uint4 *>(x)[v];
#pragma unroll
        for (int i = 0; i < 8; ++i) a.h[i] = float_to_bf16(gelu_tanh(bf16_to_float(a.h[i])));
        reinterpret_cast<uint4 *>(out)[v] = a.u;
    }
    for (int i = vectors * 8 + first; i < n; i += stride)
        out[i] = float_to_bf16(gelu_tanh(bf16_to_float(x[i])));
}
