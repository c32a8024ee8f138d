// The linear layers the reference keeps in f32 (the DiT's time embedding and projection, the
// head): out[r, n] = Σ_k x[r, k]·w[n, k] + bias[n], x and out f32, w bf16 or f32 (read as
// stored, widened exactly), f32 products and sums.
//
// Tile: a block of 16×16 threads computes a 64×64 tile of out, each thread a 4×4 sub-tile in
// registers; the k loop stages 16-wide slices of the x and w tiles in shared memory, transposed
// so that the inner product reads them as broadcast rows (no bank conflicts; +1 padding for the
// transposing stores). These layers are small next to the bf16 GEMMs (rows × 1536 × 64 for the
// head), so a plain SIMT tile is enough; they need f32 operands, which the tensor-core GEMMs of
// cuBLASLt would round.
#include "typed.cuh"

#define TILE 64
#define SLICE 16

template <typename W>
__device__ void linear_f32(const float *__restrict__ x, const W *__restrict__ w,
                           const float *__restrict__ bias, int has_bias, float *__restrict__ out,
                           int rows, int n, int k) {
    __shared__ float xs[SLICE][TILE + 1];
    __shared__ float ws[SLICE][TILE + 1];
    const int tx = threadIdx.x, ty = threadIdx.y, t = ty * 16 + tx;
    const int row0 = blockIdx.y * TILE, col0 = blockIdx.x * TILE;
    float acc[4][4] = {};
    for (int k0 = 0; k0 < k; k0 += SLICE) {
        // 256 threads stage 64 rows × 16 k of each operand: 4 values each, consecutive threads
        // on consecutive k of a row (coalesced 64-byte row segments).
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int e = t + i * 256, r = e / SLICE, kk = e % SLICE;
            const bool kin = k0 + kk < k;
            xs[kk][r] = row0 + r < rows && kin ? x[static_cast<size_t>(row0 + r) * k + k0 + kk]
                                               : 0.0f;
            ws[kk][r] = col0 + r < n && kin ? to_f32(w[static_cast<size_t>(col0 + r) * k + k0 + kk])
                                            : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < SLICE; ++kk) {
            float a[4], b[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                a[i] = xs[kk][ty * 4 + i];
                b[i] = ws[kk][tx * 4 + i];
            }
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int r = row0 + ty * 4 + i;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int c = col0 + tx * 4 + j;
            if (r < rows && c < n)
                out[static_cast<size_t>(r) * n + c] = acc[i][j] + (has_bias ? bias[c] : 0.0f);
        }
    }
}

extern "C" __global__ void __launch_bounds__(256)
    linear_f32_w_bf16(const float *x, const bf16_bits *w, const float *bias, int has_bias,
                      float *out, int rows, int n, int k) {
    linear_f32(x, w, bias, has_bias, out, rows, n, k);
}

extern "C" __global__ void __launch_bounds__(256)
    linear_f32_w_f32(const float *x, const float *w, const float *bias, int has_bias, float *out,
                     int rows, int n, int k) {
    linear_f32(x, w, bias, has_bias, out, rows, n, k);
}
