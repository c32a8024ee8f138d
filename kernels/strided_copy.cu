// The data movement of the shape ops (permute, narrow, pad_zeros, cat) as one kernel: every
// element of a region of `dims` is copied from src[src_offset + Σ i_d·src_strides[d]] to
// dst[dst_offset + Σ i_d·dst_strides[d]], or set to zero where some index lies outside
// [lo[d], hi[d]) (the padding). Strides and offsets count elements and may be negative.
//
// The host planner (`src/backend/cuda/kernels/strided_copy.rs`) drops size-1 dims, merges dims
// that are contiguous in both buffers and, where the innermost run of both is contiguous and
// aligned, widens the element to 16, 8 or 4 bytes; so a contiguous copy moves 16-byte vectors.
// The kernel is compiled per element size.
//
// Tile: a grid-stride loop of one element per thread, consecutive threads on consecutive
// destination elements (coalesced stores; loads coalesce wherever the innermost dim is
// contiguous in the source). The index arithmetic is 32-bit: regions hold fewer than 2^32
// elements (checked by the planner).
#include "typed.cuh"

struct CopyPlan {
    int rank;
    unsigned dims[MAX_RANK];
    unsigned lo[MAX_RANK];
    unsigned hi[MAX_RANK];
    long long src_strides[MAX_RANK];
    long long dst_strides[MAX_RANK];
    long long src_offset;
    long long dst_offset;
};

template <typename E>
__device__ void strided_copy(const E *__restrict__ src, E *__restrict__ dst, const CopyPlan &p,
                             unsigned n) {
    const unsigned stride = gridDim.x * blockDim.x;
    for (unsigned e = blockIdx.x * blockDim.x + threadIdx.x; e < n; e += stride) {
        unsigned rem = e;
        long long s = p.src_offset, d = p.dst_offset;
        bool inside = true;
        for (int k = p.rank - 1; k >= 0; --k) {
            const unsigned q = rem / p.dims[k], i = rem - q * p.dims[k];
            rem = q;
            inside = inside && i >= p.lo[k] && i < p.hi[k];
            s += i * p.src_strides[k];
            d += i * p.dst_strides[k];
        }
        E v;
        if (inside)
            v = src[s];
        else
            v = E{};
        dst[d] = v;
    }
}

#define STRIDED_COPY(NAME, E)                                                                  \
    extern "C" __global__ void NAME(const E *src, E *dst, CopyPlan p, unsigned n) {            \
        strided_copy(src, dst, p, n);                                                          \
    }

STRIDED_COPY(strided_copy_b1, unsigned char)
STRIDED_COPY(strided_copy_b2, unsigned short)
STRIDED_COPY(strided_copy_b4, unsigned int)
STRIDED_COPY(strided_copy_b8, unsigned long long)
STRIDED_COPY(strided_copy_b16, uint4)
