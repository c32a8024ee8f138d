// Embedding lookup: out[i, :] = table[ids[i], :] for a bf16 table [V, D] (UMT5's token
// embedding, and its relative-position bias: a lookup of bucket ids in the [buckets, heads]
// table). The op refuses ids >= V on the host before the launch; the kernel itself writes a
// zero row for such an id rather than read outside the table.
//
// Tile: one block of 128 threads per id (grid-stride over the ids); the threads copy the row in
// 16-byte vectors when D is a multiple of 8 and both buffers are aligned (a 4096-wide T5 row is
// 512 vectors, 4 per thread), else element by element (the position table's narrow rows).
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(128)
    embedding_bf16(const unsigned *__restrict__ ids, const bf16_bits *__restrict__ table,
                   bf16_bits *__restrict__ out, int n, int d, unsigned vocab) {
    const bool vec = d % 8 == 0 && aligned16(table, out);
    for (int i = blockIdx.x; i < n; i += gridDim.x) {
        const unsigned id = ids[i];
        const bf16_bits *src = table + static_cast<long long>(id) * d;
        bf16_bits *dst = out + static_cast<long long>(i) * d;
        if (id >= vocab) {
            for (int c = threadIdx.x; c < d; c += blockDim.x) dst[c] = 0;
        } else if (vec) {
            for (int v = threadIdx.x; v < d / 8; v += blockDim.x)
                reinterpret_cast<uint4 *>(dst)[v] = reinterpret_cast<const uint4 *>(src)[v];
        } else {
            for (int c = threadIdx.x; c < d; c += blockDim.x) dst[c] = src[c];
        }
    }
}
