// LayerNorm fused with the DiT's modulation: out = LN(x)·(scale_offset + scale) + shift, with
// scale_offset 1 for the modulation (shift, scale) and 0 for a plain affine (bias, weight), for
// bf16 rows (bf16 out) and f32 rows (f32 out: the residual stream the reference keeps in f32).
//
// Tile: one block of 256 threads per row. A row of the DiT (1536 or 5120 values, 3 to 20 KB) is
// read three times (mean, centred variance, output) in 16-byte vectors; after the first pass it
// is in L1, so global traffic is one read and one write. Two-pass statistics in f32 keep the
// variance exact for rows with a large mean; one block per row needs no grid-wide reduction and
// the 32K-row grids of the DiT fill every SM many times over.
#include "typed.cuh"

// Sums f(value) over the row, 8 values per vector load where the row allows it.
template <typename T, typename F>
__device__ __forceinline__ float row_sum(const T *__restrict__ row, int cols, bool vec, F f) {
    float acc = 0.0f;
    const int vectors = vec ? cols / 8 : 0;
    for (int v = threadIdx.x; v < vectors; v += blockDim.x) {
        float p[8];
        load8(row + 8 * v, p);
#pragma unroll
        for (int i = 0; i < 8; ++i) acc += f(p[i]);
    }
    for (int c = vectors * 8 + threadIdx.x; c < cols; c += blockDim.x) acc += f(to_f32(row[c]));
    return acc;
}

template <typename T>
__device__ void layer_norm_modulate(const T *__restrict__ x, const float *__restrict__ shift,
                                    const float *__restrict__ scale, float scale_offset,
                                    T *__restrict__ out, int cols, float eps) {
    __shared__ float scratch[32];
    const long long offset = static_cast<long long>(blockIdx.x) * cols;
    const T *row = x + offset;
    T *orow = out + offset;
    const bool vec = cols % 8 == 0 && aligned16(x, out) && aligned16(shift, scale);
    const float mean = block_sum(row_sum(row, cols, vec, [](float v) { return v; }), scratch) / cols;
    const float var =
        block_sum(row_sum(row, cols, vec, [mean](float v) { return (v - mean) * (v - mean); }),
                  scratch) /
        cols;
    const float inv = rsqrtf(var + eps);
    const int vectors = vec ? cols / 8 : 0;
    for (int v = threadIdx.x; v < vectors; v += blockDim.x) {
        float p[8];
        load8(row + 8 * v, p);
        Float4 sh[2], sc[2];
        sh[0].v = reinterpret_cast<const float4 *>(shift)[2 * v];
        sh[1].v = reinterpret_cast<const float4 *>(shift)[2 * v + 1];
        sc[0].v = reinterpret_cast<const float4 *>(scale)[2 * v];
        sc[1].v = reinterpret_cast<const float4 *>(scale)[2 * v + 1];
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const float n = (p[i] - mean) * inv;
            p[i] = n * (scale_offset + sc[i / 4].f[i % 4]) + sh[i / 4].f[i % 4];
        }
        store8(orow + 8 * v, p);
    }
    for (int c = vectors * 8 + threadIdx.x; c < cols; c += blockDim.x) {
        const float n = (to_f32(row[c]) - mean) * inv;
        orow[c] = from_f32<T>(n * (scale_offset + scale[c]) + shift[c]);
    }
}

extern "C" __global__ void __launch_bounds__(256)
    layer_norm_modulate_bf16(const bf16_bits *x, const float *shift, const float *scale,
                             float scale_offset, bf16_bits *out, int cols, float eps) {
    layer_norm_modulate(x, shift, scale, scale_offset, out, cols, eps);
}

extern "C" __global__ void __launch_bounds__(256)
    layer_norm_modulate_f32(const float *x, const float *shift, const float *scale,
                            float scale_offset, float *out, int cols, float eps) {
    layer_norm_modulate(x, shift, scale, scale_offset, out, cols, eps);
}
