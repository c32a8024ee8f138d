// 8-bit attention for sm_90a (H100, H200): the scheme of `Q8Path::Sm90` in
// src/backend/cpu/attention_q8.rs, which is the sm_80 kernel's (kernels/attention_q8.cu: INT8
// Q·Kᵀ with one scale per token, K and V smoothed, fp16 P·V, f32 accumulation straight into O)
// with a key tile of 128. It reads the operands of attention_q8.cu's pre-pass unchanged (q8 and
// k8 INT8 [B, H, L, D], their scales [B, H, L] f32, v16 f16 [B, H, L, D], the means) and writes
// bf16 out [B, Lq, H, D]. head_dim 128 only (head_dim 64 keeps the mma.sync kernel), non-causal,
// any lengths. Launched by src/backend/cuda/kernels/attention_q8_sm90.rs.
//
// Tiles. A CTA owns BLOCK_M = 128 queries of one (batch, head) and walks the keys in tiles of
// BLOCK_N = 128. Three warpgroups (384 threads):
//   - warpgroup 0, the producer: its first warp loads Q once and then each K/V tile with TMA
//     (`cp.async.bulk.tensor`, tensor maps made on the host, 128-byte swizzle, rows past the
//     sequence zero-filled by the hardware) into a STAGES = 3 deep ring, and copies the tile's 128
//     K scales into shared memory; a full mbarrier per stage carries both (one arrival per lane,
//     lane 0's with the transaction count, plus the TMA bytes). The other three warps exit at
//     once.
//   - warpgroups 1 and 2, the consumers, 64 queries each (the M of wgmma), per key tile j:
//       S = Q Kᵀ: 4 × wgmma m64n128k32 s8·s8 → s32, both operands K-major from shared memory;
//       dequantize float(S) · q_scale · k_scale, mask keys ≥ kv_len to −inf, online softmax in
//       base 2 with P = exp2(s − max) rounded to f16 and the row sum over the rounded values
//       (attention.cu's and attention_q8.cu's arithmetic); rescale O;
//       O += P V: 8 × wgmma m64n128k16 f16·f16 → f32, P from registers (the S accumulator's
//       layout is the A fragment's), V from shared memory MN-major (the transpose bit: V stays
//       [keys, D] as the pre-pass wrote it).
//     Software-pipelined by one tile (FlashAttention-3's intra-warpgroup overlap): S(j) and
//     P(j−1)·V(j−1) are issued together, the softmax of S(j) runs while P·V finishes, then O is
//     rescaled for tile j and every consumer thread arrives on stage j−1's empty mbarrier (count
//     256), which the producer waits on before refilling the stage. P(j−1) and P(j) live in
//     different registers (pinned until P·V's wait), else ptxas serialises the wgmmas (C7513).
//   Output: o / l + V mean, rounded to bf16 and stored from the registers (once per CTA).
//
// Shared memory (dynamic, 1024-byte aligned for the 128-byte swizzle): Q 128 × 128 B = 16 KB;
// per stage K 128 × 128 B = 16 KB and V as two 64-channel halves of 128 × 128 B = 32 KB, so
// 48 KB × 3 = 144 KB; 160 KB in all (+1 KB alignment slack), plus 1.5 KB of static K scales and
// the barriers. One CTA per SM (the register file decides it anyway).
//
// Registers: 384 threads at one CTA per SM allow 168 each (`__launch_bounds__(384, 1)`);
// `setmaxnreg` gives the producer 40 and the consumers 232 (128·40 + 256·232 = 64,512 ≤ 65,536).
// A consumer holds O (64 f32), S (64 s32), P(j−1) and P(j) (32 f16x2 each) and the softmax state.
//
// Expected speed (reasoned, not measured: no sm_90 device was available when it was written).
// Per 128-key tile a CTA does 2·128·128·128 INT8 ops (Q·Kᵀ; 1,979 dense TOPS on an H100 SXM) and
// as many f16 ops (P·V; 989 TFLOPS): if the tensor cores never idled, 2 / (1/1979 + 1/989) =
// 1,319 TOPS counted as 4·L²·d, 1.33× the f16-only bound. The softmax's 128·128 exp2 per tile
// (MUFU, ~3.9 T/s) take about two thirds of that tensor-core time; they overlap the wgmma of the
// same warpgroup (the pipelining above) and of the other one. FlashAttention-3 reaches 75 % of
// its f16 bound this way (740 TFLOPS); the same fraction here would be ~990 TOPS, and anything
// above 65 % meets the issue's ≥ 850. Not done: ping-pong named barriers between the two
// consumer warpgroups (FlashAttention-3's other scheduling refinement), a persistent grid.
#include "common.cuh"
#include <cuda.h>
#include <cuda_fp16.h>

#define SM90_BLOCK_M 128
#define SM90_BLOCK_N 128
#define SM90_D 128
#define STAGES 3
#define CONSUMERS 2
#define SM90_THREADS ((CONSUMERS + 1) * 128)
// Bytes of one Q tile, one K tile, one V tile (two 64-channel halves) and one stage.
#define Q_BYTES (SM90_BLOCK_M * SM90_D)
#define K_BYTES (SM90_BLOCK_N * SM90_D)
#define V_HALF_BYTES (SM90_BLOCK_N * 64 * 2)
#define STAGE_BYTES (K_BYTES + 2 * V_HALF_BYTES)

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)

__device__ __forceinline__ unsigned smem_addr(const void *p) {
    return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void mbar_init(unsigned bar, unsigned count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count));
}

// One arrival that also announces `bytes` of TMA transactions on this phase.
__device__ __forceinline__ void mbar_arrive_expect_tx(unsigned bar, unsigned bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar),
                 "r"(bytes)
                 : "memory");
}

__device__ __forceinline__ void mbar_arrive(unsigned bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}

// Waits until the phase of parity `parity` of the barrier has completed.
__device__ __forceinline__ void mbar_wait(unsigned bar, unsigned parity) {
    asm volatile("{\n"
                 ".reg .pred done;\n"
                 "WAIT_%=:\n"
                 "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
                 "@!done bra WAIT_%=;\n"
                 "}\n" ::"r"(bar),
                 "r"(parity)
                 : "memory");
}

// A 3-D box (c0 innermost) of the tensor `map` into shared memory at `dst`, completing on `bar`.
__device__ __forceinline__ void tma_load_3d(unsigned dst, const CUtensorMap *map, unsigned bar,
                                            int c0, int c1, int c2) {
    asm volatile("cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes"
                 " [%0], [%1, {%3, %4, %5}], [%2];\n" ::"r"(dst),
                 "l"(reinterpret_cast<unsigned long long>(map)), "r"(bar), "r"(c0), "r"(c1),
                 "r"(c2)
                 : "memory");
}

// A shared-memory matrix descriptor with the 128-byte swizzle (layout type 1): start address,
// leading and stride byte offsets, each in 16-byte units. The tiles start 1024-byte aligned,
// so the base-offset field stays 0; a k-step inside a 128-byte row moves the start address.
__device__ __forceinline__ unsigned long long sw128_desc(unsigned addr, unsigned lbo,
                                                         unsigned sbo) {
    return static_cast<unsigned long long>((addr & 0x3FFFF) >> 4) |
           (static_cast<unsigned long long>(lbo >> 4) << 16) |
           (static_cast<unsigned long long>(sbo >> 4) << 32) | (1ull << 62);
}

__device__ __forceinline__ void wgmma_fence() {
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
// Waits until at most N of this warpgroup's commit groups are pending (the oldest finish first).
template <int N> __device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

// Keeps the compiler from moving accesses of registers an asynchronous wgmma reads or writes
// across its fence or its wait, and keeps them allocated (not reused) until this point.
template <typename T, int N> __device__ __forceinline__ void pin_registers(T (&r)[N]) {
    static_assert(sizeof(T) == 4, "32-bit integer registers");
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+r"(r[i])::"memory");
}
template <int N> __device__ __forceinline__ void pin_registers(float (&r)[N]) {
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}

#define OPS8(C, X, I)                                                                          \
    C(X[I]), C(X[I + 1]), C(X[I + 2]), C(X[I + 3]), C(X[I + 4]), C(X[I + 5]), C(X[I + 6]),     \
        C(X[I + 7])
#define OPS64(C, X)                                                                            \
    OPS8(C, X, 0), OPS8(C, X, 8), OPS8(C, X, 16), OPS8(C, X, 24), OPS8(C, X, 32),              \
        OPS8(C, X, 40), OPS8(C, X, 48), OPS8(C, X, 56)
#define REGS64                                                                                 \
    "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, "   \
    "%19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, " \
    "%37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, " \
    "%55, %56, %57, %58, %59, %60, %61, %62, %63}"

// d (+)= A·B for a 64×32 INT8 A and a 32×128 INT8 B, both K-major in shared memory; d is the
// 64×128 s32 accumulator of the warpgroup (thread layout as mma.sync's C, repeated along N).
// ACCUMULATE = 0 overwrites d.
template <int ACCUMULATE>
__device__ __forceinline__ void wgmma_s8_m64n128k32(int (&d)[64], unsigned long long a,
                                                    unsigned long long b) {
    asm volatile("{\n"
                 ".reg .pred p;\n"
                 "setp.ne.b32 p, %66, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k32.s32.s8.s8 " REGS64 ", %64, %65, p;\n"
                 "}\n"
                 : OPS64("+r", d)
                 : "l"(a), "l"(b), "r"(ACCUMULATE));
}

// d += A·B for a 64×16 f16 A in registers (mma.sync's A fragment per warp of 16 rows) and a
// 16×128 f16 B in shared memory, MN-major (transpose bit set); d f32.
__device__ __forceinline__ void wgmma_f16_m64n128k16_rs(float (&d)[64], const uint32_t (&a)[4],
                                                        unsigned long long b) {
    asm volatile("{\n"
                 ".reg .pred p;\n"
                 "setp.ne.b32 p, %69, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 " REGS64
                 ", {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n"
                 "}\n"
                 : OPS64("+f", d)
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
}

// The producer warp: Q once, then every K/V tile into the ring with its K scales.
__device__ __forceinline__ void produce(const CUtensorMap *tm_q, const CUtensorMap *tm_k,
                                        const CUtensorMap *tm_v, const float *__restrict__ ksb,
                                        unsigned tiles_addr, float (*sKs)[SM90_BLOCK_N],
                                        unsigned q_full, unsigned full0, unsigned empty0, int m0,
                                        int bh, int Lk, int tiles) {
    const int lane = threadIdx.x & 31;
    if (lane == 0) {
        mbar_arrive_expect_tx(q_full, Q_BYTES);
        tma_load_3d(tiles_addr, tm_q, q_full, 0, m0, bh);
    }
    for (int j = 0; j < tiles; ++j) {
        const int s = j % STAGES;
        const unsigned full = full0 + 8 * s, empty = empty0 + 8 * s;
        // Use n = j / STAGES of stage s needs use n − 1 released (parity 1 passes at once).
        mbar_wait(empty, ((j / STAGES) & 1) ^ 1);
        for (int i = lane; i < SM90_BLOCK_N; i += 32) {
            const int key = j * SM90_BLOCK_N + i;
            sKs[s][i] = key < Lk ? ksb[key] : 0.0f;
        }
        // Each lane's arrival releases its own scale writes; lane 0's also announces the bytes.
        if (lane == 0) {
            const unsigned stage = tiles_addr + Q_BYTES + s * STAGE_BYTES;
            mbar_arrive_expect_tx(full, STAGE_BYTES);
            tma_load_3d(stage, tm_k, full, 0, j * SM90_BLOCK_N, bh);
            tma_load_3d(stage + K_BYTES, tm_v, full, 0, j * SM90_BLOCK_N, bh);
            tma_load_3d(stage + K_BYTES + V_HALF_BYTES, tm_v, full, 64, j * SM90_BLOCK_N, bh);
        } else {
            mbar_arrive(full);
        }
    }
}

// The online softmax of one S tile (keys key0..key0 + 127, their K scales `ks`): dequantize,
// mask keys ≥ Lk, update the row maxima and sums, P = exp2(s − max) rounded to f16 into `p` (the
// A fragments of P·V), and the factor O must be rescaled by into `corr`. acc[4i + e] is the
// thread's row (+ 8 for e ≥ 2) and key 8i + 2·(lane % 4) + e % 2; p[i] packs acc[2i] and
// acc[2i + 1] (row + 8 for odd i).
__device__ __forceinline__ void softmax_tile(const int (&acc)[64], const float *ks,
                                             const float (&qs)[2], int key0, int Lk, int lane,
                                             float (&row_max)[2], float (&row_sum)[2],
                                             uint32_t (&p)[32], float (&corr)[2]) {
    const int col0 = (lane & 3) * 2;
    float sv[64];
    float tile_max[2] = {row_max[0], row_max[1]};
#pragma unroll
    for (int i = 0; i < 16; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int col = i * 8 + col0 + (e & 1);
            sv[4 * i + e] = key0 + col < Lk
                                ? __int2float_rn(acc[4 * i + e]) * (qs[e >> 1] * ks[col])
                                : -INFINITY;
            tile_max[e >> 1] = fmaxf(tile_max[e >> 1], sv[4 * i + e]);
        }
    float tile_sum[2] = {0.0f, 0.0f};
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 1));
        tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 2));
        // Tile 0 always holds a valid key, so tile_max is finite and exp2(-inf) = 0.
        corr[r] = exp2f(row_max[r] - tile_max[r]);
        row_max[r] = tile_max[r];
    }
#pragma unroll
    for (int i = 0; i < 32; ++i) {
        const int r = i & 1; // sv[2i] and sv[2i + 1] share a row: row + 8 for odd i
        const float lo = __half2float(__float2half_rn(exp2f(sv[2 * i] - tile_max[r])));
        const float hi = __half2float(__float2half_rn(exp2f(sv[2 * i + 1] - tile_max[r])));
        tile_sum[r] += lo + hi;
        p[i] = pack_f16x2(lo, hi);
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        tile_sum[r] += __shfl_xor_sync(0xffffffffu, tile_sum[r], 1);
        tile_sum[r] += __shfl_xor_sync(0xffffffffu, tile_sum[r], 2);
        row_sum[r] = __fadd_rn(__fmul_rn(row_sum[r], corr[r]), tile_sum[r]);
    }
}

// Issues S = Q Kᵀ for the K tile at `stage` (four k-steps of 32 bytes inside the swizzled
// 128-byte rows) as one commit group.
__device__ __forceinline__ void issue_qk(int (&acc)[64], unsigned q_tile, unsigned stage) {
    wgmma_s8_m64n128k32<0>(acc, sw128_desc(q_tile, 16, 1024), sw128_desc(stage, 16, 1024));
#pragma unroll
    for (int ks = 1; ks < SM90_D / 32; ++ks)
        wgmma_s8_m64n128k32<1>(acc, sw128_desc(q_tile + 32 * ks, 16, 1024),
                               sw128_desc(stage + 32 * ks, 16, 1024));
    wgmma_commit();
}

// Issues O += P V for the V tile at `stage` (eight k-steps of 16 keys; V's two 64-channel
// halves are LBO apart) as one commit group.
__device__ __forceinline__ void issue_pv(float (&o)[64], const uint32_t (&p)[32],
                                         unsigned stage) {
#pragma unroll
    for (int kk = 0; kk < SM90_BLOCK_N / 16; ++kk) {
        const uint32_t a[4] = {p[4 * kk], p[4 * kk + 1], p[4 * kk + 2], p[4 * kk + 3]};
        wgmma_f16_m64n128k16_rs(o, a,
                                sw128_desc(stage + K_BYTES + kk * 16 * 128, V_HALF_BYTES, 1024));
    }
    wgmma_commit();
}

// One consumer warpgroup (`c` = 0 or 1): 64 queries from m0 + 64·c through every key tile,
// software-pipelined by one tile: S(j) = Q K(j)ᵀ and O += P(j−1) V(j−1) are in flight together,
// the softmax of S(j) runs while P(j−1) V(j−1) finishes, then O is rescaled for tile j.
__device__ __forceinline__ void consume(const float *__restrict__ q_scale,
                                        const float *__restrict__ vmean,
                                        bf16_bits *__restrict__ out, unsigned tiles_addr,
                                        const float (*sKs)[SM90_BLOCK_N], unsigned q_full,
                                        unsigned full0, unsigned empty0, int c, int m0, int b,
                                        int h, long long bh, int Lq, int Lk, int H, int tiles) {
    const int t = threadIdx.x & 127, warp = t >> 5, lane = t & 31;
    const int row = c * 64 + warp * 16 + (lane >> 2); // and row + 8
    float qs[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int q = m0 + row + 8 * r;
        qs[r] = q < Lq ? q_scale[bh * Lq + q] : 0.0f;
    }
    const unsigned q_tile = tiles_addr + c * (64 * SM90_D);
    auto stage_addr = [&](int j) { return tiles_addr + Q_BYTES + (j % STAGES) * STAGE_BYTES; };

    float o[64];
#pragma unroll
    for (int i = 0; i < 64; ++i) o[i] = 0.0f;
    float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f}, corr[2];
    int acc[64];
    uint32_t p[32];
    mbar_wait(q_full, 0);

    // Tile 0: S, then its softmax (O is zero, so its correction is moot).
    mbar_wait(full0, 0);
    pin_registers(acc);
    wgmma_fence();
    issue_qk(acc, q_tile, stage_addr(0));
    wgmma_wait<0>();
    pin_registers(acc);
    softmax_tile(acc, sKs[0], qs, 0, Lk, lane, row_max, row_sum, p, corr);

    for (int j = 1; j < tiles; ++j) {
        const int s = j % STAGES;
        mbar_wait(full0 + 8 * s, (j / STAGES) & 1);
        pin_registers(acc);
        pin_registers(o);
        wgmma_fence();
        issue_qk(acc, q_tile, stage_addr(j));
        issue_pv(o, p, stage_addr(j - 1));
        wgmma_wait<1>(); // S(j) has landed; P(j−1) V(j−1) may still run
        pin_registers(acc);
        uint32_t p_next[32];
        softmax_tile(acc, sKs[s], qs, j * SM90_BLOCK_N, Lk, lane, row_max, row_sum, p_next, corr);
        wgmma_wait<0>();
        pin_registers(o);
        pin_registers(p); // P(j−1) V(j−1) read p until here: keep p_next out of its registers
        mbar_arrive(empty0 + 8 * ((j - 1) % STAGES));
#pragma unroll
        for (int i = 0; i < 64; ++i) o[i] *= corr[(i >> 1) & 1];
#pragma unroll
        for (int i = 0; i < 32; ++i) p[i] = p_next[i];
    }
    pin_registers(o);
    wgmma_fence();
    issue_pv(o, p, stage_addr(tiles - 1));
    wgmma_wait<0>();
    pin_registers(o);
    mbar_arrive(empty0 + 8 * ((tiles - 1) % STAGES));

    // o / l + V mean, bf16, stored as pairs (o[4i + e]: row + 8·(e ≥ 2), channel 8i + col0 + e%2).
    const float inv[2] = {row_sum[0] > 0.0f ? 1.0f / row_sum[0] : 0.0f,
                          row_sum[1] > 0.0f ? 1.0f / row_sum[1] : 0.0f};
    const long long row_stride = static_cast<long long>(H) * SM90_D;
    bf16_bits *ob = out + static_cast<long long>(b) * Lq * row_stride + h * SM90_D;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int q = m0 + row + 8 * r;
        if (q >= Lq) continue;
#pragma unroll
        for (int i = 0; i < 16; ++i) {
            const int col = i * 8 + (lane & 3) * 2;
            *reinterpret_cast<uint32_t *>(ob + q * row_stride + col) =
                pack_bf16x2(__fadd_rn(__fmul_rn(o[4 * i + 2 * r], inv[r]), vmean[col]),
                            __fadd_rn(__fmul_rn(o[4 * i + 2 * r + 1], inv[r]), vmean[col + 1]));
        }
    }
}

#endif // __CUDA_ARCH_FEAT_SM90_ALL

// Grid (⌈Lq / 128⌉, H, B), 384 threads, dynamic shared memory Q_BYTES + STAGES·STAGE_BYTES +
// 1024. tm_q / tm_k: INT8 q8 / k8 as 3-D {D, L, B·H} with boxes {128, 128, 1}; tm_v: f16 v16 as
// {D, Lk, B·H} with boxes {64, 128, 1}; all with the 128-byte swizzle and zero fill.
extern "C" __global__ void __launch_bounds__(SM90_THREADS, 1)
    attention_q8_sm90_hd128(const __grid_constant__ CUtensorMap tm_q,
                            const __grid_constant__ CUtensorMap tm_k,
                            const __grid_constant__ CUtensorMap tm_v,
                            const float *__restrict__ q_scale, const float *__restrict__ k_scale,
                            const float *__restrict__ means, bf16_bits *__restrict__ out, int Lq,
                            int Lk, int H) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    extern __shared__ uint8_t dyn[];
    __shared__ float sKs[STAGES][SM90_BLOCK_N];
    __shared__ __align__(8) unsigned long long bars[1 + 2 * STAGES];
    const unsigned tiles_addr = (smem_addr(dyn) + 1023) & ~1023u;
    const unsigned q_full = smem_addr(&bars[0]), full0 = q_full + 8, empty0 = full0 + 8 * STAGES;
    const int m0 = blockIdx.x * SM90_BLOCK_M, h = blockIdx.y, b = blockIdx.z;
    const long long bh = static_cast<long long>(b) * H + h;
    const int tiles = (Lk + SM90_BLOCK_N - 1) / SM90_BLOCK_N;
    if (threadIdx.x == 0) {
        mbar_init(q_full, 1);
        for (int s = 0; s < STAGES; ++s) {
            mbar_init(full0 + 8 * s, 32); // the producer warp's lanes
            mbar_init(empty0 + 8 * s, CONSUMERS * 128);
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();
    const int wg = threadIdx.x / 128;
    if (wg == 0) {
        asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n");
        if (threadIdx.x < 32)
            produce(&tm_q, &tm_k, &tm_v, k_scale + bh * Lk, tiles_addr, sKs, q_full, full0,
                    empty0, m0, static_cast<int>(bh), Lk, tiles);
    } else {
        asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n");
        consume(q_scale, means + bh * 2 * SM90_D + SM90_D, out, tiles_addr, sKs, q_full, full0,
                empty0, wg - 1, m0, b, h, bh, Lq, Lk, H, tiles);
    }
#else
    __trap(); // launched on sm_90a only (the launcher checks the compute capability)
#endif
}
