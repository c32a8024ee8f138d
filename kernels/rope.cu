// Rotary embedding on interleaved pairs of x [B, S, H, D] (bf16 or f32) with f32 cos/sin tables
// [S, D/2]: out[2j] = x[2j]·cos - x[2j+1]·sin, out[2j+1] = x[2j]·sin + x[2j+1]·cos, computed in
// f32 (products rounded separately, as the CPU backend does), the output in x's dtype.
//
// Tile: a grid-stride loop in which each thread turns 4 pairs (8 values: one 16-byte vector of
// bf16, two of f32; the 4 angles are one 16-byte load from each table) when D is a multiple of
// 8 and the buffers are 16-byte aligned, else one pair. Consecutive threads take consecutive
// pairs of a head, so x, out and the tables are read in whole lines; the tables are shared by
// the B·H rows of a token.
#include "typed.cuh"

__device__ __forceinline__ void turn(float &a, float &b, float c, float s) {
    const float x0 = a, x1 = b;
    a = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
    b = __fadd_rn(__fmul_rn(x0, s), __fmul_rn(x1, c));
}

template <typename T>
__device__ void rope(const T *__restrict__ x, const float *__restrict__ cos,
                     const float *__restrict__ sin, T *__restrict__ out, unsigned seq,
                     unsigned heads, unsigned half, unsigned pairs) {
    const unsigned stride = gridDim.x * blockDim.x;
    const unsigned first = blockIdx.x * blockDim.x + threadIdx.x;
    if (half % 4 == 0 && aligned16(x, out) && aligned16(cos, sin)) {
        for (unsigned g = first; g < pairs / 4; g += stride) {
            const unsigned p = g * 4, j = p % half, s = p / half / heads % seq;
            float v[8];
            load8(x + static_cast<size_t>(p) * 2, v);
            Float4 c, sn;
            c.v = *reinterpret_cast<const float4 *>(cos + static_cast<size_t>(s) * half + j);
            sn.v = *reinterpret_cast<const float4 *>(sin + static_cast<size_t>(s) * half + j);
#pragma unroll
            for (int i = 0; i < 4; ++i) turn(v[2 * i], v[2 * i + 1], c.f[i], sn.f[i]);
            store8(out + static_cast<size_t>(p) * 2, v);
        }
        return;
    }
    for (unsigned p = first; p < pairs; p += stride) {
        const unsigned j = p % half, s = p / half / heads % seq;
        const size_t t = static_cast<size_t>(s) * half + j;
        float a = to_f32(x[2 * static_cast<size_t>(p)]), b = to_f32(x[2 * static_cast<size_t>(p) + 1]);
        turn(a, b, cos[t], sin[t]);
        out[2 * static_cast<size_t>(p)] = from_f32<T>(a);
        out[2 * static_cast<size_t>(p) + 1] = from_f32<T>(b);
    }
}

extern "C" __global__ void rope_interleaved_bf16(const bf16_bits *x, const float *cos,
                                                 const float *sin, bf16_bits *out, unsigned seq,
                                                 unsigned heads, unsigned half, unsigned pairs) {
    rope(x, cos, sin, out, seq, heads, half, pairs);
}

extern "C" __global__ void rope_interleaved_f32(const float *x, const float *cos,
                                                const float *sin, float *out, unsigned seq,
                                                unsigned heads, unsigned half, unsigned pairs) {
    rope(x, cos, sin, out, seq, heads, half, pairs);
}
