// Reductions over one dim (sum, mean, max) and the last-dim softmax, on bf16 or f32, in f32
// arithmetic, the output in the input's dtype.
//
// A reduction views its input as [outer, n, inner]. Tile: with inner == 1 a warp reduces one
// contiguous row (lanes read consecutive values, then a shuffle tree), so every load is
// coalesced; with inner > 1 a thread reduces one output, walking its column with stride inner,
// and the consecutive threads of a warp read consecutive addresses. The softmax gives a warp to
// each row (three passes over it: max, sum of e^(x - max), scaled write), rows being short in
// the models (attention is its own kernel).
#include "typed.cuh"

enum ReduceOp { SUM = 0, MEAN = 1, MAX = 2 };

// The maximum, NaN as soon as either is NaN.
__device__ __forceinline__ float max_nan(float a, float b) {
    return a != a ? a : (b != b ? b : fmaxf(a, b));
}

__device__ __forceinline__ float combine(int op, float a, float b) {
    return op == MAX ? max_nan(a, b) : a + b;
}

__device__ __forceinline__ float warp_reduce(int op, float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = combine(op, v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

__device__ __forceinline__ float finish(int op, float acc, unsigned n) {
    return op == MEAN ? acc / static_cast<float>(n) : acc;
}

template <typename T>
__device__ void reduce(int op, const T *__restrict__ x, T *__restrict__ out, unsigned outer,
                       unsigned n, unsigned inner) {
    const float start = op == MAX ? -INFINITY : 0.0f;
    const unsigned outputs = outer * inner;
    if (inner == 1) {
        const unsigned lane = threadIdx.x & 31;
        const unsigned warps = gridDim.x * blockDim.x / 32;
        for (unsigned r = (blockIdx.x * blockDim.x + threadIdx.x) / 32; r < outputs; r += warps) {
            const T *row = x + static_cast<size_t>(r) * n;
            float acc = start;
            for (unsigned k = lane; k < n; k += 32) acc = combine(op, acc, to_f32(row[k]));
            acc = warp_reduce(op, acc);
            if (lane == 0) out[r] = from_f32<T>(finish(op, acc, n));
        }
        return;
    }
    const unsigned stride = gridDim.x * blockDim.x;
    for (unsigned o = blockIdx.x * blockDim.x + threadIdx.x; o < outputs; o += stride) {
        const unsigned i = o / inner, j = o - i * inner;
        const T *col = x + static_cast<size_t>(i) * n * inner + j;
        float acc = start;
        for (unsigned k = 0; k < n; ++k) acc = combine(op, acc, to_f32(col[static_cast<size_t>(k) * inner]));
        out[o] = from_f32<T>(finish(op, acc, n));
    }
}

template <typename T>
__device__ void softmax_last(const T *__restrict__ x, T *__restrict__ out, unsigned rows,
                             unsigned n) {
    const unsigned lane = threadIdx.x & 31;
    const unsigned warps = gridDim.x * blockDim.x / 32;
    for (unsigned r = (blockIdx.x * blockDim.x + threadIdx.x) / 32; r < rows; r += warps) {
        const T *in = x + static_cast<size_t>(r) * n;
        T *o = out + static_cast<size_t>(r) * n;
        float m = -INFINITY;
        for (unsigned k = lane; k < n; k += 32) m = max_nan(m, to_f32(in[k]));
        m = warp_reduce(MAX, m);
        float s = 0.0f;
        for (unsigned k = lane; k < n; k += 32) s += expf(to_f32(in[k]) - m);
        const float scale = 1.0f / warp_reduce(SUM, s);
        for (unsigned k = lane; k < n; k += 32) o[k] = from_f32<T>(expf(to_f32(in[k]) - m) * scale);
    }
}

extern "C" __global__ void reduce_bf16(int op, const bf16_bits *x, bf16_bits *out,
                                       unsigned outer, unsigned n, unsigned inner) {
    reduce(op, x, out, outer, n, inner);
}

extern "C" __global__ void reduce_f32(int op, const float *x, float *out, unsigned outer,
                                      unsigned n, unsigned inner) {
    reduce(op, x, out, outer, n, inner);
}

extern "C" __global__ void softmax_last_bf16(const bf16_bits *x, bf16_bits *out, unsigned rows,
                                             unsigned n) {
    softmax_last(x, out, rows, n);
}

extern "C" __global__ void softmax_last_f32(const float *x, float *out, unsigned rows,
                                            unsigned n) {
    softmax_last(x, out, rows, n);
}
