// Nearest-neighbour ×2 upsampling of the last two dims of bf16 [N, H, W] (the VAE's spatial
// upsampling before its 3×3 conv): out[n, y, x] = in[n, y / 2, x / 2].
//
// Tile: one thread per input element pair along a row: it reads two adjacent bf16 (4 bytes) and
// writes a 4-value run to each of the two output rows it covers (8 bytes each); a warp covers
// 64 consecutive input columns, so reads and writes are coalesced runs. A grid-stride loop
// covers any size; an odd W takes the scalar tail.
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(256)
    upsample_nearest2x_bf16(const bf16_bits *__restrict__ x, bf16_bits *__restrict__ out,
                            long long planes, int h, int w) {
    const int pairs = (w + 1) / 2;
    const long long total = planes * h * pairs;
    for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < total;
         i += static_cast<long long>(gridDim.x) * blockDim.x) {
        const int pair = static_cast<int>(i % pairs);
        const long long row = i / pairs;  // plane * h + y
        const int c = 2 * pair;
        const bf16_bits *src = x + row * w + c;
        const long long plane = row / h, y = row - plane * h;
        bf16_bits *dst = out + (plane * 2 * h + 2 * y) * (2LL * w) + 2 * c;
        const int n = c + 1 < w ? 2 : 1;
        for (int e = 0; e < n; ++e) {
            const bf16_bits v = src[e];
            dst[2 * e] = v;
            dst[2 * e + 1] = v;
            dst[2 * w + 2 * e] = v;
            dst[2 * w + 2 * e + 1] = v;
        }
    }
}
