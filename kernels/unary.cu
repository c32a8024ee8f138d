// Element-wise maps of the tensor ops (`UnaryOp`: SiLU, GELU tanh and erf, tanh, exp, abs,
// square, sqrt, affine, clamp) on bf16 or f32, computed in f32, the output in the input's dtype.
//
// Tile: a grid-stride loop in which each thread maps 8 consecutive values per step, read and
// written as 16-byte vectors, then single values for the last n % 8 (all of them when a pointer
// is not 16-byte aligned: launcher views may be offset).
// The op is a kernel argument: every thread of a launch takes the same branch.
#include "typed.cuh"

enum UnaryOp { SILU = 0, GELU_TANH, GELU_ERF, TANH, EXP, ABS, SQR, SQRT, AFFINE, CLAMP };

// 1 / (1 + e^-x) from e^-|x|: nothing overflows and the lower tail keeps its relative accuracy
// (the CPU backend's form).
__device__ __forceinline__ float sigmoid(float x) {
    const float e = expf(-fabsf(x));
    const float r = 1.0f / (1.0f + e);
    return x < 0.0f ? e * r : r;
}

// `p0`, `p1`: (mul, add) for AFFINE, (min, max) for CLAMP.
__device__ __forceinline__ float map(int op, float x, float p0, float p1) {
    switch (op) {
    case SILU: return x * sigmoid(x);
    // 0.5·(1 + tanh u) = sigmoid(2u): no cancellation for negative x.
    case GELU_TANH: return x * sigmoid(2.0f * 0.7978845608028654f * (x + 0.044715f * x * x * x));
    case GELU_ERF: return 0.5f * x * (1.0f + erff(x * 0.7071067811865476f));
    case TANH: return tanhf(x);
    case EXP: return expf(x);
    case ABS: return fabsf(x);
    case SQR: return x * x;
    case SQRT: return sqrtf(x);
    // Unfused, as the CPU computes it (a fused multiply-add would round once, not twice).
    case AFFINE: return __fadd_rn(__fmul_rn(x, p0), p1);
    default: return x != x ? x : fminf(fmaxf(x, p0), p1); // CLAMP; NaN stays NaN
    }
}

template <typename T>
__device__ void unary(int op, const T *__restrict__ x, T *__restrict__ out, unsigned n, float p0,
                      float p1) {
    const unsigned stride = gridDim.x * blockDim.x;
    const unsigned first = blockIdx.x * blockDim.x + threadIdx.x;
    const unsigned vectors = aligned16(x, out) ? n / 8 : 0;
    for (unsigned v = first; v < vectors; v += stride) {
        float a[8];
        load8(x + static_cast<size_t>(v) * 8, a);
#pragma unroll
        for (int i = 0; i < 8; ++i) a[i] = map(op, a[i], p0, p1);
        store8(out + static_cast<size_t>(v) * 8, a);
    }
    for (unsigned i = vectors * 8 + first; i < n; i += stride)
        out[i] = from_f32<T>(map(op, to_f32(x[i]), p0, p1));
}

extern "C" __global__ void unary_bf16(int op, const bf16_bits *x, bf16_bits *out, unsigned n,
                                      float p0, float p1) {
    unary(op, x, out, n, p0, p1);
}

extern "C" __global__ void unary_f32(int op, const float *x, float *out, unsigned n, float p0,
                                     float p1) {
    unary(op, x, out, n, p0, p1);
}
