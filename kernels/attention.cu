// bf16 attention in the FlashAttention-2 scheme: out = softmax(scale · q kᵀ) v per (batch, head),
// q/out [B, Lq, H, D], k/v [B, Lk, H, D] bf16, D = 64 or 128, online softmax in f32, no Lq×Lk
// buffer, any Lq and Lk (partial tiles are zero-filled and their keys masked).
//
// Tile: a block of 4 warps owns BLOCK_M = 64 queries of one head (16 rows per warp, the M of one
// mma.sync m16n8k16) and walks the keys in tiles of BLOCK_N = 64:
//   - Q is staged once through shared memory and kept in registers as mma A fragments
//     (D/16 × 4 registers), so the inner loop reads only K and V from shared memory.
//   - S = Q Kᵀ for 16 × 64 per warp is 8 n-tiles of f32 accumulators (32 registers); the running
//     max and sum live with the rows each thread owns (rows lane/4 and lane/4 + 8), reduced over
//     the 4 lanes of a row with two shuffles, and exp2 with the scale folded in.
//   - P is rounded to bf16 and reused straight from the S accumulators as A fragments (the
//     m16n8 C layout of two n-tiles is the m16k16 A layout), and O += P V accumulates D/8 n-tiles
//     of f32 (64 registers at D = 128).
//   - K and V tiles arrive by cp.async (16 bytes per thread per copy), single-buffered but
//     interleaved: V(j) loads while S(j) is computed and K(j+1) while P(j)V(j) is, so both
//     buffers fit in 2 × 64 × (D + 8) × 2 = 34 KB of static shared memory (under the 48 KB
//     static limit). Rows are padded by 8 bf16 (16 bytes) so the eight 16-byte rows an
//     ldmatrix phase reads fall in distinct banks.
// 64 × 64 tiles with 4 warps hold the Q, S and O fragments (~130 registers at D = 128) without
// spills while each K/V tile is reused by 64 queries. `__launch_bounds__(128, 3)` caps the
// registers at 168 so three blocks (12 warps) share an SM where shared memory allows (sm_80,
// sm_90); without the bound ptxas chose 128 registers for D = 64 on sm_90a and spilled.
#include "common.cuh"

#define BLOCK_M 64
#define BLOCK_N 64
#define WARPS 4

template <int D>
__device__ __forceinline__ void attention_block(const bf16_bits *__restrict__ q,
                                                const bf16_bits *__restrict__ k,
                                                const bf16_bits *__restrict__ v,
                                                bf16_bits *__restrict__ out, int Lq, int Lk, int H,
                                                float scale) {
    constexpr int STRIDE = D + 8;       // padded shared-memory row, in bf16
    constexpr int CHUNKS = D / 8;       // 16-byte chunks per row
    constexpr int KSTEPS = D / 16;      // k-steps of Q Kᵀ
    constexpr int S_TILES = BLOCK_N / 8; // n-tiles of S
    constexpr int O_TILES = D / 8;      // n-tiles of O
    __shared__ __align__(16) bf16_bits sK[BLOCK_N * STRIDE];
    __shared__ __align__(16) bf16_bits sV[BLOCK_N * STRIDE];

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int m0 = blockIdx.x * BLOCK_M, h = blockIdx.y, b = blockIdx.z;
    const long long row_stride = static_cast<long long>(H) * D;
    const bf16_bits *qb = q + static_cast<long long>(b) * Lq * row_stride + h * D;
    const bf16_bits *kb = k + static_cast<long long>(b) * Lk * row_stride + h * D;
    const bf16_bits *vb = v + static_cast<long long>(b) * Lk * row_stride + h * D;
    bf16_bits *ob = out + static_cast<long long>(b) * Lq * row_stride + h * D;

    // Rows row0.. of a [len, H, D] tensor into a 64-row shared tile, zeros past `len`.
    auto load_tile = [&](bf16_bits *s, const bf16_bits *g, int row0, int len) {
#pragma unroll
        for (int c = tid; c < BLOCK_N * CHUNKS; c += WARPS * 32) {
            const int r = c / CHUNKS, col = (c % CHUNKS) * 8;
            const bool valid = row0 + r < len;
            const bf16_bits *src = valid ? g + (row0 + r) * row_stride + col : g;
            cp_async_16(s + r * STRIDE + col, src, valid);
        }
    };

    // Q: staged through sK, then held as A fragments.
    uint32_t qf[KSTEPS][4];
    load_tile(sK, qb, m0, Lq);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
#pragma unroll
    for (int ks = 0; ks < KSTEPS; ++ks)
        ldmatrix_x4(qf[ks], sK + (warp * 16 + (lane & 15)) * STRIDE + ks * 16 + (lane >> 4) * 8);
    __syncthreads();

    const int tiles = (Lk + BLOCK_N - 1) / BLOCK_N;
    if (tiles > 0) {
        load_tile(sK, kb, 0, Lk);
        cp_async_commit();
        load_tile(sV, vb, 0, Lk);
        cp_async_commit();
    }

    float o[O_TILES][4];
#pragma unroll
    for (int t = 0; t < O_TILES; ++t) o[t][0] = o[t][1] = o[t][2] = o[t][3] = 0.0f;
    float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f};
    const float scale_log2 = scale * 1.4426950408889634f;

    for (int j = 0; j < tiles; ++j) {
        cp_async_wait<1>(); // K(j) has landed; V(j) may still be in flight
        __syncthreads();
        float s[S_TILES][4];
#pragma unroll
        for (int t = 0; t < S_TILES; ++t) s[t][0] = s[t][1] = s[t][2] = s[t][3] = 0.0f;
#pragma unroll
        for (int ks = 0; ks < KSTEPS; ++ks) {
#pragma unroll
            for (int t = 0; t < S_TILES; t += 2) {
                uint32_t kf[4];
                ldmatrix_x4(kf, sK + (t * 8 + (lane & 7) + (lane >> 4) * 8) * STRIDE + ks * 16 +
                                    ((lane >> 3) & 1) * 8);
                mma_bf16_16816(s[t], qf[ks], kf[0], kf[1]);
                mma_bf16_16816(s[t + 1], qf[ks], kf[2], kf[3]);
            }
        }
        __syncthreads(); // every warp is done with K(j)
        const bool more = j + 1 < tiles;
        if (more) {
            load_tile(sK, kb, (j + 1) * BLOCK_N, Lk);
            cp_async_commit();
        }

        // Online softmax over this tile; masked keys get -inf, P stays f32 until packed.
        const int key0 = j * BLOCK_N + (lane & 3) * 2;
#pragma unroll
        for (int t = 0; t < S_TILES; ++t)
#pragma unroll
            for (int e = 0; e < 4; ++e)
                s[t][e] = key0 + t * 8 + (e & 1) < Lk ? s[t][e] * scale_log2 : -INFINITY;
        float correction[2];
        online_softmax_tile(s, row_max, row_sum, correction, 0.0f, [](float p) { return p; });
        scale_rows(o, correction);

        if (more)
            cp_async_wait<1>(); // V(j) has landed; K(j+1) may still be in flight
        else
            cp_async_wait<0>();
        __syncthreads();
        pv_mma_16<false>(o, s, sV, STRIDE, lane);
        __syncthreads(); // every warp is done with V(j)
        if (more) {
            load_tile(sV, vb, (j + 1) * BLOCK_N, Lk);
            cp_async_commit();
        }
    }

    // Normalise, stage the 64 × D tile through sK, store 16-byte vectors of the valid rows.
    const float inv[2] = {row_sum[0] > 0.0f ? 1.0f / row_sum[0] : 0.0f,
                          row_sum[1] > 0.0f ? 1.0f / row_sum[1] : 0.0f};
    const int r0 = warp * 16 + (lane >> 2);
#pragma unroll
    for (int t = 0; t < O_TILES; ++t) {
        const int col = t * 8 + (lane & 3) * 2;
        *reinterpret_cast<uint32_t *>(sK + r0 * STRIDE + col) =
            pack_bf16x2(o[t][0] * inv[0], o[t][1] * inv[0]);
        *reinterpret_cast<uint32_t *>(sK + (r0 + 8) * STRIDE + col) =
            pack_bf16x2(o[t][2] * inv[1], o[t][3] * inv[1]);
    }
    __syncthreads();
#pragma unroll
    for (int c = tid; c < BLOCK_M * CHUNKS; c += WARPS * 32) {
        const int r = c / CHUNKS, col = (c % CHUNKS) * 8;
        if (m0 + r < Lq)
            *reinterpret_cast<uint4 *>(ob + (m0 + r) * row_stride + col) =
                *reinterpret_cast<const uint4 *>(sK + r * STRIDE + col);
    }
}

extern "C" __global__ void __launch_bounds__(WARPS * 32, 3)
    attention_hd64_bf16(const bf16_bits *__restrict__ q, const bf16_bits *__restrict__ k,
                        const bf16_bits *__restrict__ v, bf16_bits *__restrict__ out, int Lq,
                        int Lk, int H, float scale) {
    attention_block<64>(q, k, v, out, Lq, Lk, H, scale);
}

extern "C" __global__ void __launch_bounds__(WARPS * 32, 3)
    attention_hd128_bf16(const bf16_bits *__restrict__ q, const bf16_bits *__restrict__ k,
                         const bf16_bits *__restrict__ v, bf16_bits *__restrict__ out, int Lq,
                         int Lk, int H, float scale) {
    attention_block<128>(q, k, v, out, Lq, Lk, H, scale);
}
