// The DiT's q/k RMSNorm over the full model dim, fused with the 3-D RoPE of self-attention:
// y = bf16(x / sqrt(mean(x²) + eps)) · weight (f32), then channels (2j, 2j+1) of every head turned
// by the token's angle for pair j (f32), rounded to bf16 once.
//
// Tile: one block of 256 threads per token (1536 or 5120 channels). The sum of squares reads the
// row in 16-byte vectors; the second pass handles 8 channels (4 RoPE pairs, never split across a
// head since head_dim is even) per 16-byte load and store. The token's cos/sin row (head_dim/2
// f32, 256 bytes at 128) is shared by all its heads, so it is read per pair and served from L1.
// One block per token needs no grid-wide reduction.
#include "common.cuh"

// Normalised, weighted and (optionally) rotated values of channels c and c + 1.
__device__ __forceinline__ void norm_rope_pair(float a, float b, int c, float inv,
                                               const float *__restrict__ weight,
                                               const float *__restrict__ cos_row,
                                               const float *__restrict__ sin_row, int apply_rope,
                                               int head_dim, float &ya, float &yb) {
    // Upstream: the norm is cast back to the input dtype (bf16), then multiplied by the f32
    // weight.
    ya = bf16_to_float(float_to_bf16(a * inv)) * weight[c];
    yb = bf16_to_float(float_to_bf16(b * inv)) * weight[c + 1];
    if (apply_rope) {
        const int j = (c % head_dim) / 2;
        const float cs = cos_row[j], sn = sin_row[j];
        const float ra = ya * cs - yb * sn, rb = ya * sn + yb * cs;
        ya = ra;
        yb = rb;
    }
}

extern "C" __global__ void __launch_bounds__(256)
    rms_norm_rope_bf16(const bf16_bits *__restrict__ x, const float *__restrict__ weight,
                       const float *__restrict__ cos, const float *__restrict__ sin,
                       int apply_rope, bf16_bits *__restrict__ out, int dim, int head_dim,
                       float eps) {
    __shared__ float scratch[32];
    const long long offset = static_cast<long long>(blockIdx.x) * dim;
    const bf16_bits *row = x + offset;
    bf16_bits *orow = out + offset;
    const float *cos_row = cos + static_cast<long long>(blockIdx.x) * (head_dim / 2);
    const float *sin_row = sin + static_cast<long long>(blockIdx.x) * (head_dim / 2);
    const bool vec = dim % 8 == 0 && aligned16(x, out);
    const int vectors = vec ? dim / 8 : 0;

    float ss = 0.0f;
    for (int v = threadIdx.x; v < vectors; v += blockDim.x) {
        Pack8 p;
        p.u = reinterpret_cast<const uint4 *>(row)[v];
#pragma unroll
        for (int i = 0; i < 8; ++i) ss += bf16_to_float(p.h[i]) * bf16_to_float(p.h[i]);
    }
    for (int c = vectors * 8 + threadIdx.x; c < dim; c += blockDim.x)
        ss += bf16_to_float(row[c]) * bf16_to_float(row[c]);
    const float inv = rsqrtf(block_sum(ss, scratch) / dim + eps);

    for (int v = threadIdx.x; v < vectors; v += blockDim.x) {
        Pack8 p;
        p.u = reinterpret_cast<const uint4 *>(row)[v];
#pragma unroll
        for (int i = 0; i < 8; i += 2) {
            float ya, yb;
            norm_rope_pair(bf16_to_float(p.h[i]), bf16_to_float(p.h[i + 1]), v * 8 + i, inv,
                           weight, cos_row, sin_row, apply_rope, head_dim, ya, yb);
            p.h[i] = float_to_bf16(ya);
            p.h[i + 1] = float_to_bf16(yb);
        }
        reinterpret_cast<uint4 *>(orow)[v] = p.u;
    }
    for (int c = vectors * 8 + 2 * threadIdx.x; c < dim; c += 2 * blockDim.x) {
        float ya, yb;
        norm_rope_pair(bf16_to_float(row[c]), bf16_to_float(row[c + 1]), c, inv, weight, cos_row,
                       sin_row, apply_rope, head_dim, ya, yb);
        orow[c] = float_to_bf16(ya);
        orow[c + 1] = float_to_bf16(yb);
    }
}
