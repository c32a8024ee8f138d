// The Wan VAE's channel RMS norm of bf16 [B, C, P]: at every position p the channel vector is
// divided by max(||x||_2, 1e-12) and multiplied by sqrt(C)·gamma[c]; f32 statistics, the output
// rounded to bf16 once.
//
// Tile: one thread per position, 256 per block. The channels of a position are P elements
// apart, so a thread walks them with stride P while the 32 threads of a warp read 32
// consecutive positions of each channel plane (64-byte coalesced runs); two passes (squares,
// then the scaled output), the second mostly from L2. No shared memory, no reduction across
// threads: the VAE's planes (up to 480·832 positions) give far more threads than the GPU holds.
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(256)
    channel_rms_norm_bf16(const bf16_bits *__restrict__ x, const float *__restrict__ gamma,
                          bf16_bits *__restrict__ out, int channels, long long positions,
                          long long total_positions) {
    const float root_c = sqrtf(static_cast<float>(channels));
    for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
         i < total_positions; i += static_cast<long long>(gridDim.x) * blockDim.x) {
        const long long b = i / positions, p = i - b * positions;
        const long long base = b * channels * positions + p;
        float sq = 0.0f;
        for (int c = 0; c < channels; ++c) {
            const float v = bf16_to_float(x[base + c * positions]);
            sq += v * v;
        }
        const float inv = 1.0f / fmaxf(sqrtf(sq), 1e-12f);
        for (int c = 0; c < channels; ++c) {
            const long long at = base + c * positions;
            out[at] = float_to_bf16(bf16_to_float(x[at]) * inv * (gamma[c] * root_c));
        }
    }
}
