// The DiT's gated residual add, bf16 in and out, f32 arithmetic (GELU and the other maps are in
// unary.cu).
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
