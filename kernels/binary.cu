// Binary arithmetic with numpy broadcasting: out = a op b, computed in f32, for bf16 and f32
// operands (the output is f32 when either operand is, bf16 otherwise).
//
// Plan (built on the host, `src/backend/cuda/kernels/binary.rs`): the output's dims with size-1
// dims dropped and dims merged wherever both operands allow, so the innermost dim is a run in
// which each operand is contiguous (stride 1) or one repeated value (stride 0).
//
// Tile: a grid-stride loop over groups of G consecutive outputs of a run (G = 8 when the run is a
// multiple of 8 long and the buffers are 16-byte aligned, else 1); a group's operand offsets are found once (the index arithmetic is
// per group, not per value), a contiguous operand is read with 16-byte vector loads and the
// output written with 16-byte stores, so a warp moves whole 128-byte lines.
#include "typed.cuh"

struct BroadcastPlan {
    int rank;
    unsigned dims[MAX_RANK];
    long long a_strides[MAX_RANK];
    long long b_strides[MAX_RANK];
};

enum BinaryOp { ADD = 0, SUB = 1, MUL = 2, DIV = 3 };

__device__ __forceinline__ float apply(int op, float a, float b) {
    switch (op) {
    case ADD: return a + b;
    case SUB: return a - b;
    case MUL: return a * b;
    default: return a / b;
    }
}

// G values of an operand at `off`: contiguous (stride 1) or one value repeated (stride 0).
template <int G, typename T>
__device__ __forceinline__ void load_run(const T *p, long long off, bool contiguous, float v[G]) {
    if (!contiguous) {
        const float s = to_f32(p[off]);
#pragma unroll
        for (int i = 0; i < G; ++i) v[i] = s;
    } else if constexpr (G == 8) {
        load8(p + off, v);
    } else {
#pragma unroll
        for (int i = 0; i < G; ++i) v[i] = to_f32(p[off + i]);
    }
}

template <int G, typename A, typename B, typename O>
__device__ void binary_groups(int op, const A *__restrict__ a, const B *__restrict__ b,
                              O *__restrict__ out, const BroadcastPlan &p, unsigned n) {
    const unsigned groups = n / G;
    const unsigned stride = gridDim.x * blockDim.x;
    const bool a_run = p.a_strides[p.rank - 1] != 0, b_run = p.b_strides[p.rank - 1] != 0;
    for (unsigned g = blockIdx.x * blockDim.x + threadIdx.x; g < groups; g += stride) {
        unsigned rem = g * G;
        long long oa = 0, ob = 0;
        for (int d = p.rank - 1; d >= 0; --d) {
            const unsigned q = rem / p.dims[d], i = rem - q * p.dims[d];
            rem = q;
            oa += i * p.a_strides[d];
            ob += i * p.b_strides[d];
        }
        float va[G], vb[G], vo[G];
        load_run<G>(a, oa, a_run, va);
        load_run<G>(b, ob, b_run, vb);
#pragma unroll
        for (int i = 0; i < G; ++i) vo[i] = apply(op, va[i], vb[i]);
        if constexpr (G == 8) {
            store8(out + static_cast<size_t>(g) * 8, vo);
        } else {
#pragma unroll
            for (int i = 0; i < G; ++i) out[static_cast<size_t>(g) * G + i] = from_f32<O>(vo[i]);
        }
    }
}

template <typename A, typename B, typename O>
__device__ void binary(int op, const A *a, const B *b, O *out, const BroadcastPlan &p,
                       unsigned n) {
    if (p.dims[p.rank - 1] % 8 == 0 && aligned16(a, b) && aligned16(out, out))
        binary_groups<8>(op, a, b, out, p, n);
    else
        binary_groups<1>(op, a, b, out, p, n);
}

#define BINARY_KERNEL(NAME, A, B, O)                                                           \
    extern "C" __global__ void NAME(int op, const A *a, const B *b, O *out, BroadcastPlan p,   \
                                    unsigned n) {                                             \
        binary<A, B, O>(op, a, b, out, p, n);                                                  \
    }

BINARY_KERNEL(binary_bf16_bf16, bf16_bits, bf16_bits, bf16_bits)
BINARY_KERNEL(binary_f32_f32, float, float, float)
BINARY_KERNEL(binary_bf16_f32, bf16_bits, float, float)
BINARY_KERNEL(binary_f32_bf16, float, bf16_bits, float)
