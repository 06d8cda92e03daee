// tessera's CUDA kernels, compiled at run time by NVRTC (layers/cuda_kernels.rs says why).
// No headers under NVRTC, so half precision is converted with PTX instructions. Arithmetic in
// f32 (statistics in f64) whatever the storage type.

// No headers under NVRTC: negative infinity by its bits.
#define NEG_INF __int_as_float(0xff800000)

struct half_t { unsigned short bits; };
struct bf16_t { unsigned short bits; };

__device__ __forceinline__ float load(const float *p, long long i) { return p[i]; }
__device__ __forceinline__ float load(const half_t *p, long long i) {
    float f;
    asm("{ cvt.f32.f16 %0, %1; }" : "=f"(f) : "h"(p[i].bits));
    return f;
}
__device__ __forceinline__ float load(const bf16_t *p, long long i) {
    return __uint_as_float(((unsigned int)p[i].bits) << 16);
}

__device__ __forceinline__ void store(float *p, long long i, float v) { p[i] = v; }
__device__ __forceinline__ void store(half_t *p, long long i, float v) {
    unsigned short h;
    asm("{ cvt.rn.f16.f32 %0, %1; }" : "=h"(h) : "f"(v));
    p[i].bits = h;
}
__device__ __forceinline__ void store(bf16_t *p, long long i, float v) {
    unsigned int u = __float_as_uint(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        p[i].bits = 0x7fc0;
        return;
    }
    u += 0x7fffu + ((u >> 16) & 1u); // round to nearest, ties to even
    p[i].bits = (unsigned short)(u >> 16);
}

// Merge two (maximum, sum of exp(x - maximum)) pairs.
__device__ __forceinline__ void merge(float &m, float &s, float m2, float s2) {
    float top = fmaxf(m, m2);
    if (top == NEG_INF) {
        return; // both empty
    }
    s = s * expf(m - top) + s2 * expf(m2 - top);
    m = top;
}

// Softmax over the last dimension, one block per row: one pass for the running maximum and
// sum (rescaled as the maximum grows), one for the output.
template <typename T>
__device__ void softmax_rows(const T *x, T *y, int cols) {
    __shared__ float shared_m[32];
    __shared__ float shared_s[32];
    const long long row = blockIdx.x;
    const T *xr = x + row * cols;
    T *yr = y + row * cols;
    float m = NEG_INF, s = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float v = load(xr, c);
        if (v == NEG_INF) {
            continue;
        }
        if (v > m) {
            s = s * expf(m - v) + 1.0f;
            m = v;
        } else {
            s += expf(v - m);
        }
    }
    for (int offset = 16; offset > 0; offset >>= 1) {
        float m2 = __shfl_xor_sync(0xffffffffu, m, offset);
        float s2 = __shfl_xor_sync(0xffffffffu, s, offset);
        merge(m, s, m2, s2);
    }
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int warps = blockDim.x / 32;
    if (lane == 0) {
        shared_m[warp] = m;
        shared_s[warp] = s;
    }
    __syncthreads();
    if (warp == 0) {
        m = lane < warps ? shared_m[lane] : NEG_INF;
        s = lane < warps ? shared_s[lane] : 0.0f;
        for (int offset = 16; offset > 0; offset >>= 1) {
            float m2 = __shfl_xor_sync(0xffffffffu, m, offset);
            float s2 = __shfl_xor_sync(0xffffffffu, s, offset);
            merge(m, s, m2, s2);
        }
        if (lane == 0) {
            shared_m[0] = m;
            shared_s[0] = s;
        }
    }
    __syncthreads();
    const float top = shared_m[0];
    const float inv = 1.0f / shared_s[0];
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        store(yr, c, expf(load(xr, c) - top) * inv);
    }
}

extern "C" __global__ void softmax_f32(const float *x, float *y, int cols) {
    softmax_rows(x, y, cols);
}
extern "C" __global__ void softmax_f16(const half_t *x, half_t *y, int cols) {
    softmax_rows(x, y, cols);
}
extern "C" __global__ void softmax_bf16(const bf16_t *x, bf16_t *y, int cols) {
    softmax_rows(x, y, cols);
}

// Sum of a double over the block (blockDim.x a multiple of 32, at most 1024); every thread
// gets the total.
__device__ double block_sum(double v) {
    __shared__ double partial[32];
    for (int offset = 16; offset > 0; offset >>= 1) {
        v += __shfl_xor_sync(0xffffffffu, v, offset);
    }
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads(); // `partial` may still be read from a previous call
    if (lane == 0) {
        partial[warp] = v;
    }
    __syncthreads();
    v = lane < blockDim.x / 32 ? partial[lane] : 0.0;
    for (int offset = 16; offset > 0; offset >>= 1) {
        v += __shfl_xor_sync(0xffffffffu, v, offset);
    }
    return v;
}

// GroupNorm statistics: one block per (batch item, group), whose `n` values are contiguous in
// NCHW. Sums in f64 around the group's first value (no cancellation); writes mean and
// 1/sqrt(var + eps) as two floats per group.
template <typename T>
__device__ void group_stats(const T *x, float *stats, long long n, float eps) {
    const T *xg = x + (long long)blockIdx.x * n;
    const float shift = load(xg, 0);
    double s = 0.0, q = 0.0;
    for (long long i = threadIdx.x; i < n; i += blockDim.x) {
        const double v = (double)(load(xg, i) - shift);
        s += v;
        q += v * v;
    }
    s = block_sum(s);
    q = block_sum(q);
    if (threadIdx.x == 0) {
        const double mean = s / (double)n;
        const double var = fmax(q / (double)n - mean * mean, 0.0);
        stats[2 * blockIdx.x] = (float)(shift + mean);
        stats[2 * blockIdx.x + 1] = (float)(1.0 / sqrt(var + (double)eps));
    }
}

// GroupNorm applied with the statistics above, then gamma, beta (f32, per channel) and SiLU
// when `silu`: y = silu((x - mean) * rstd * gamma + beta). `total` = B * C * hw values.
template <typename T>
__device__ void group_apply(const T *x, T *y, const float *stats, const float *gamma,
                            const float *beta, long long hw, int channels, int per_group,
                            int silu, long long total) {
    const int groups = channels / per_group;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const long long bc = i / hw;
        const int c = (int)(bc % channels);
        const long long g = (bc / channels) * groups + c / per_group;
        float v = (load(x, i) - stats[2 * g]) * stats[2 * g + 1] * gamma[c] + beta[c];
        if (silu) {
            v = v / (1.0f + expf(-v));
        }
        store(y, i, v);
    }
}

// GEGLU: rows of 2 * inner values (a, gate) -> a * gelu(gate) with the exact (erf) GELU.
template <typename T>
__device__ void geglu(const T *h, T *y, long long rows, int inner) {
    const long long total = rows * inner;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const long long r = i / inner;
        const int c = (int)(i % inner);
        const float a = load(h, r * 2 * inner + c);
        const float g = load(h, r * 2 * inner + inner + c);
        store(y, i, a * 0.5f * g * (1.0f + erff(g * 0.70710678118654752f)));
    }
}

#define FOR_TYPES(KERNEL, ...)                                                                  \
    KERNEL(f32, float, __VA_ARGS__)                                                             \
    KERNEL(f16, half_t, __VA_ARGS__)                                                            \
    KERNEL(bf16, bf16_t, __VA_ARGS__)

#define GROUP_STATS(SUFFIX, T, _)                                                               \
    extern "C" __global__ void group_stats_##SUFFIX(const T *x, float *stats, long long n,      \
                                                    float eps) {                                \
        group_stats(x, stats, n, eps);                                                          \
    }
FOR_TYPES(GROUP_STATS, 0)

#define GROUP_APPLY(SUFFIX, T, _)                                                               \
    extern "C" __global__ void group_apply_##SUFFIX(                                            \
        const T *x, T *y, const float *stats, const float *gamma, const float *beta,            \
        long long hw, int channels, int per_group, int silu, long long total) {                 \
        group_apply(x, y, stats, gamma, beta, hw, channels, per_group, silu, total);            \
    }
FOR_TYPES(GROUP_APPLY, 0)

#define GEGLU(SUFFIX, T, _)                                                                     \
    extern "C" __global__ void geglu_##SUFFIX(const T *h, T *y, long long rows, int inner) {     \
        geglu(h, y, rows, inner);                                                               \
    }
FOR_TYPES(GEGLU, 0)
