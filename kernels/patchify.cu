// Patchify (latent [C, F, H, W] f32 -> tokens [F·H/ph·W/pw, C·ph·pw] bf16, features (c, kh, kw))
// and unpatchify (head output [tokens, ph·pw·C] f32, features (kh, kw, c) -> latent f32).
//
// Tile: a grid-stride loop with one thread per output value, so every store is coalesced. These
// are permutations whose reads are strided by the patch (ph·pw = 4 values of a token lie on two
// rows of the latent), so a 16-byte vector would gather from different rows: there is no
// contiguous 16-byte read to vectorise, and both kernels run once per forward on the latent
// (16 channels), which is tiny next to one attention.
#include "common.cuh"

extern "C" __global__ void patchify_f32_bf16(const float *__restrict__ x,
                                             bf16_bits *__restrict__ out, int C, int F, int H,
                                             int W, int ph, int pw) {
    const int hp = H / ph, wp = W / pw, features = C * ph * pw;
    const long long n = static_cast<long long>(F) * hp * wp * features;
    const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
    for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
         i += stride) {
        const long long token = i / features;
        const int feat = static_cast<int>(i % features);
        const int c = feat / (ph * pw), kh = (feat / pw) % ph, kw = feat % pw;
        const int f = static_cast<int>(token / (static_cast<long long>(hp) * wp));
        const int hh = static_cast<int>((token / wp) % hp), ww = static_cast<int>(token % wp);
        const long long src =
            ((static_cast<long long>(c) * F + f) * H + hh * ph + kh) * W + ww * pw + kw;
        out[i] = float_to_bf16(x[src]);
    }
}

extern "C" __global__ void unpatchify_f32(const float *__restrict__ x, float *__restrict__ out,
                                          int C, int F, int H, int W, int ph, int pw) {
    const int hp = H / ph, wp = W / pw, features = C * ph * pw;
    const long long n = static_cast<long long>(C) * F * H * W;
    const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
    for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
         i += stride) {
        const int xw = static_cast<int>(i % W), yh = static_cast<int>((i / W) % H);
        const int f = static_cast<int>((i / (static_cast<long long>(W) * H)) % F);
        const int c = static_cast<int>(i / (static_cast<long long>(W) * H * F));
        const long long token = (static_cast<long long>(f) * hp + yh / ph) * wp + xw / pw;
        const int feat = ((yh % ph) * pw + xw % pw) * C + c;
        out[i] = x[token * features + feat];
    }
}
