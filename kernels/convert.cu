// Dtype conversions: f32 <-> bf16 and fp8 (e4m3fn, e5m2) times a per-tensor scale -> bf16.
//
// Tile: a grid-stride loop, 8 values per thread per step: one 16-byte bf16 vector against two
// 16-byte f32 vectors (or one 8-byte fp8 load), so every access is a full-line, coalesced vector
// access; unaligned pointers and the tail go through the same arithmetic one value at a time.
#include "common.cuh"
#include <cuda_fp8.h>

extern "C" __global__ void f32_to_bf16(const float *__restrict__ x, bf16_bits *__restrict__ out,
                                       int n) {
    const int stride = gridDim.x * blockDim.x;
    const int first = blockIdx.x * blockDim.x + threadIdx.x;
    const int vectors = aligned16(x, out) ? n / 8 : 0;
    for (int v = first; v < vectors; v += stride) {
        Float4 a, b;
        a.v = reinterpret_cast<const float4 *>(x)[2 * v];
        b.v = reinterpret_cast<const float4 *>(x)[2 * v + 1];
        Pack8 o;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            o.h[i] = float_to_bf16(a.f[i]);
            o.h[i + 4] = float_to_bf16(b.f[i]);
        }
        reinterpret_cast<uint4 *>(out)[v] = o.u;
    }
    for (int i = vectors * 8 + first; i < n; i += stride) out[i] = float_to_bf16(x[i]);
}

extern "C" __global__ void bf16_to_f32(const bf16_bits *__restrict__ x, float *__restrict__ out,
                                       int n) {
    const int stride = gridDim.x * blockDim.x;
    const int first = blockIdx.x * blockDim.x + threadIdx.x;
    const int vectors = aligned16(x, out) ? n / 8 : 0;
    for (int v = first; v < vectors; v += stride) {
        Pack8 p;
        p.u = reinterpret_cast<const uint4 *>(x)[v];
        Float4 a, b;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            a.f[i] = bf16_to_float(p.h[i]);
            b.f[i] = bf16_to_float(p.h[i + 4]);
        }
        reinterpret_cast<float4 *>(out)[2 * v] = a.v;
        reinterpret_cast<float4 *>(out)[2 * v + 1] = b.v;
    }
    for (int i = vectors * 8 + first; i < n; i += stride) out[i] = bf16_to_float(x[i]);
}

// Exact software decode of one e4m3fn code (sign, 4 exponent bits biased by 7, 3 mantissa bits;
// S.1111.111 is NaN, there is no infinity).
__device__ __forceinline__ float e4m3fn_decode_soft(unsigned c) {
    const unsigned sign = (c & 0x80u) << 24, e = (c >> 3) & 0xfu, m = c & 0x7u;
    if (e == 0xfu && m == 0x7u) return __uint_as_float(sign | 0x7fc00000u);
    if (e == 0) return (sign ? -1.0f : 1.0f) * static_cast<float>(m) * 0x1p-9f;
    return __uint_as_float(sign | ((e + 120u) << 23) | (m << 20));
}

// Exact software decode of one e5m2 code (5 exponent bits biased by 15, 2 mantissa bits, IEEE
// infinities and NaNs).
__device__ __forceinline__ float e5m2_decode_soft(unsigned c) {
    const unsigned sign = (c & 0x80u) << 24, e = (c >> 2) & 0x1fu, m = c & 0x3u;
    if (e == 0x1fu) return __uint_as_float(sign | 0x7f800000u | (m << 21));
    if (e == 0) return (sign ? -1.0f : 1.0f) * static_cast<float>(m) * 0x1p-16f;
    return __uint_as_float(sign | ((e + 112u) << 23) | (m << 21));
}

// One fp8 code to f32: the hardware conversion (cvt to f16, exact for both formats) on sm_89+,
// the software decode below.
template <__nv_fp8_interpretation_t FORMAT> __device__ __forceinline__ float fp8_decode(unsigned c) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
    const __half_raw h = __nv_cvt_fp8_to_halfraw(static_cast<__nv_fp8_storage_t>(c), FORMAT);
    return __half2float(__half(h));
#else
    return FORMAT == __NV_E4M3 ? e4m3fn_decode_soft(c) : e5m2_decode_soft(c);
#endif
}

template <__nv_fp8_interpretation_t FORMAT>
__device__ __forceinline__ void fp8_to_bf16(const unsigned char *__restrict__ x, float scale,
                                            bf16_bits *__restrict__ out, int n) {
    const int stride = gridDim.x * blockDim.x;
    const int first = blockIdx.x * blockDim.x + threadIdx.x;
    const int vectors = aligned16(x, out) ? n / 8 : 0;
    for (int v = first; v < vectors; v += stride) {
        const uint2 codes = reinterpret_cast<const uint2 *>(x)[v];
        Pack8 o;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const unsigned word = i < 4 ? codes.x : codes.y;
            o.h[i] = float_to_bf16(fp8_decode<FORMAT>((word >> (8 * (i % 4))) & 0xffu) * scale);
        }
        reinterpret_cast<uint4 *>(out)[v] = o.u;
    }
    for (int i = vectors * 8 + first; i < n; i += stride)
        out[i] = float_to_bf16(fp8_decode<FORMAT>(x[i]) * scale);
}

extern "C" __global__ void fp8_e4m3fn_to_bf16(const unsigned char *__restrict__ x, float scale,
                                              bf16_bits *__restrict__ out, int n) {
    fp8_to_bf16<__NV_E4M3>(x, scale, out, n);
}

extern "C" __global__ void fp8_e5m2_to_bf16(const unsigned char *__restrict__ x, float scale,
                                            bf16_bits *__restrict__ out, int n) {
    fp8_to_bf16<__NV_E5M2>(x, scale, out, n);
}
