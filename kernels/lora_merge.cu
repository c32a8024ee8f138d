// LoRA merge: W' = W·w_scale + Σ terms, in LoRA order, stored back in the weight's dtype, for
// every targeted weight of a model in one launch (one job per weight, blockIdx.y).
//
// A term is either a low-rank pair (`W += (scale·up) @ down`, up [rows, rank], down [rank, cols],
// f32) or a full delta (`W += scale·diff`, f32, same shape: `diff`, `diff_b`, `diff_m`). Every
// rounding is spelled out (`__fmul_rn`, `__fadd_rn`, `fmaf`, `__fdiv_rn`) so that nvcc contracts
// nothing and `src/lora/kernel_emulation.rs` reproduces each bit on the CPU: the dot product over
// the rank is a chain of fmaf in rank order started from 0, then added to the weight; the CPU
// merge's GEMM sums in another order, so the two agree within one rounding step of the stored
// dtype.
//
// Stored forms: f32, bf16 and f16 round to nearest even; fp8 (e4m3fn, e5m2) rounds to nearest
// even and saturates with the CPU's encoder (`src/tensor/fp8.rs`) written out here; a scaled fp8
// target divides by its new per-tensor scale first, which the host computes from the maximum
// |W'| that `lora_merge_amax` reduces (the same merged values, recomputed: no f32 copy of W').
//
// Tile: each thread handles ROWS consecutive rows of one column, so each `down` value is loaded
// once for ROWS outputs; consecutive threads take consecutive columns (coalesced weight, down
// and output accesses; the `up` values are the same for a warp: broadcasts). A grid-stride loop
// over the job's tiles.
#include "common.cuh"
#include <cuda_fp16.h>

// Dtype codes, shared with src/backend/cuda/kernels/lora_merge.rs.
enum : int { DT_F32 = 0, DT_BF16 = 1, DT_F16 = 2, DT_E4M3 = 3, DT_E5M2 = 4 };

constexpr int MAX_TERMS = 4;
constexpr int ROWS = 4;

// Layouts shared with the `#[repr(C)]` structs of src/backend/cuda/kernels/lora_merge.rs.
struct MergeTerm {
    const float *a; // up [rows, rank] for a pair, the delta [rows, cols] for a full delta
    const float *b; // down [rank, cols] for a pair, unused for a full delta
    int rank;       // 0 for a full delta
    float scale;    // the pair's `strength·alpha/rank`, the full delta's strength
};

struct MergeJob {
    const void *w;    // the pristine weight, w_dtype
    void *out;        // the merged weight, out_dtype
    unsigned *amax;   // bits of max |W'| (amax pass; may be null in the store pass)
    long long n;      // rows · cols
    int cols;         // the inner dimension (n for a tensor that only full deltas change)
    int w_dtype;      // DT_*
    int out_dtype;    // DT_*
    int terms;        // 0..MAX_TERMS
    float w_scale;    // the weight's scale (1 without one)
    float out_scale;  // the new fp8 scale; 0 for an unscaled target
    MergeTerm term[MAX_TERMS];
};

__device__ __forceinline__ float load_value(const void *w, int dtype, long long i) {
    switch (dtype) {
    case DT_BF16: return bf16_to_float(static_cast<const bf16_bits *>(w)[i]);
    case DT_F16: return __half2float(static_cast<const __half *>(w)[i]);
    case DT_E4M3: {
        const unsigned c = static_cast<const unsigned char *>(w)[i];
        const unsigned sign = (c & 0x80u) << 24, e = (c >> 3) & 0xfu, m = c & 0x7u;
        if (e == 0xfu && m == 0x7u) return __uint_as_float(sign | 0x7fc00000u);
        if (e == 0) return (sign ? -1.0f : 1.0f) * static_cast<float>(m) * 0x1p-9f;
        return __uint_as_float(sign | ((e + 120u) << 23) | (m << 20));
    }
    case DT_E5M2: {
        const unsigned c = static_cast<const unsigned char *>(w)[i];
        const unsigned sign = (c & 0x80u) << 24, e = (c >> 2) & 0x1fu, m = c & 0x3u;
        if (e == 0x1fu) return __uint_as_float(sign | 0x7f800000u | (m << 21));
        if (e == 0) return (sign ? -1.0f : 1.0f) * static_cast<float>(m) * 0x1p-16f;
        return __uint_as_float(sign | ((e + 112u) << 23) | (m << 21));
    }
    default: return static_cast<const float *>(w)[i];
    }
}

// The CPU's fp8 encoder (src/tensor/fp8.rs `encode`): round to nearest even, saturate to the
// largest finite code, NaN to the sign and 0x7f.
__device__ __forceinline__ unsigned char fp8_encode(float x, int exp_bits, int man_bits,
                                                    unsigned max_code, float max) {
    const unsigned sign = (__float_as_uint(x) >> 24) & 0x80u;
    if (isnan(x)) return static_cast<unsigned char>(sign | 0x7fu);
    const float a = fabsf(x);
    if (a >= max) return static_cast<unsigned char>(sign | max_code);
    const int bias = (1 << (exp_bits - 1)) - 1;
    const float min_normal = __uint_as_float(static_cast<unsigned>(1 - bias + 127) << 23);
    unsigned code;
    if (a < min_normal) {
        const float steps = __uint_as_float(static_cast<unsigned>(bias - 1 + man_bits + 127) << 23);
        code = static_cast<unsigned>(rintf(__fmul_rn(a, steps)));
    } else {
        const int shift = 23 - man_bits;
        const unsigned bits = __float_as_uint(a);
        const unsigned rounded = bits + ((1u << (shift - 1)) - 1u) + ((bits >> shift) & 1u);
        code = (rounded >> shift) - (static_cast<unsigned>(127 - bias) << man_bits);
    }
    return static_cast<unsigned char>(sign | min(code, max_code));
}

__device__ __forceinline__ void store_value(void *out, int dtype, long long i, float v) {
    switch (dtype) {
    case DT_BF16: static_cast<bf16_bits *>(out)[i] = float_to_bf16(v); break;
    case DT_F16: static_cast<__half *>(out)[i] = __float2half_rn(v); break;
    case DT_E4M3: static_cast<unsigned char *>(out)[i] = fp8_encode(v, 4, 3, 0x7eu, 448.0f); break;
    case DT_E5M2:
        static_cast<unsigned char *>(out)[i] = fp8_encode(v, 5, 2, 0x7bu, 57344.0f);
        break;
    default: static_cast<float *>(out)[i] = v;
    }
}

// The merged values of rows row0..row0+count-1 (count ≤ ROWS) of column `col`.
__device__ __forceinline__ void merged(const MergeJob &job, long long row0, int count, int col,
                                       float v[ROWS]) {
    const long long cols = job.cols;
#pragma unroll
    for (int r = 0; r < ROWS; ++r)
        v[r] = r < count ? __fmul_rn(load_value(job.w, job.w_dtype, (row0 + r) * cols + col),
                                     job.w_scale)
                         : 0.0f;
    for (int t = 0; t < job.terms; ++t) {
        const MergeTerm term = job.term[t];
        if (term.rank == 0) {
#pragma unroll
            for (int r = 0; r < ROWS; ++r)
                if (r < count)
                    v[r] = __fadd_rn(v[r], __fmul_rn(term.scale, term.a[(row0 + r) * cols + col]));
            continue;
        }
        float acc[ROWS] = {};
        for (int k = 0; k < term.rank; ++k) {
            const float d = term.b[static_cast<long long>(k) * cols + col];
#pragma unroll
            for (int r = 0; r < ROWS; ++r)
                if (r < count)
                    acc[r] = fmaf(__fmul_rn(term.scale, term.a[(row0 + r) * term.rank + k]), d,
                                  acc[r]);
        }
#pragma unroll
        for (int r = 0; r < ROWS; ++r) v[r] = __fadd_rn(v[r], acc[r]);
    }
}

// Calls `f(row0, valid, col, v)` with the merged values `v` of each of this thread's tiles of the
// job (ROWS rows of one column each, column-fastest, `valid` of them inside the weight).
template <typename F> __device__ __forceinline__ void for_each_tile(const MergeJob &job, F f) {
    const long long rows = job.n / job.cols, count = (rows + ROWS - 1) / ROWS * job.cols;
    for (long long t = blockIdx.x * blockDim.x + threadIdx.x; t < count;
         t += static_cast<long long>(gridDim.x) * blockDim.x) {
        const int col = static_cast<int>(t % job.cols);
        const long long row0 = t / job.cols * ROWS;
        const int valid = static_cast<int>(min(static_cast<long long>(ROWS), rows - row0));
        float v[ROWS];
        merged(job, row0, valid, col, v);
        f(row0, valid, col, v);
    }
}

// Pass 1 for scaled fp8 targets: the bits of max |W'| into *job.amax (a NaN wins: its bits are
// above every finite one and infinity's).
extern "C" __global__ void lora_merge_amax(const MergeJob *__restrict__ jobs) {
    const MergeJob &job = jobs[blockIdx.y];
    if (job.amax == nullptr || job.n == 0) return;
    unsigned best = 0;
    for_each_tile(job, [&](long long, int valid, int, const float *v) {
#pragma unroll
        for (int r = 0; r < ROWS; ++r)
            if (r < valid) best = max(best, __float_as_uint(fabsf(v[r])));
    });
    best = __reduce_max_sync(0xffffffffu, best);
    if ((threadIdx.x & 31) == 0 && best != 0) atomicMax(job.amax, best);
}

// Pass 2: the merged values, divided by out_scale when it is set, stored as out_dtype.
extern "C" __global__ void lora_merge_store(const MergeJob *__restrict__ jobs) {
    const MergeJob &job = jobs[blockIdx.y];
    if (job.n == 0) return;
    for_each_tile(job, [&](long long row0, int valid, int col, const float *v) {
#pragma unroll
        for (int r = 0; r < ROWS; ++r) {
            if (r >= valid) continue;
            const float q = job.out_scale > 0.0f ? __fdiv_rn(v[r], job.out_scale) : v[r];
            store_value(job.out, job.out_dtype, (row0 + r) * job.cols + col, q);
        }
    });
}
