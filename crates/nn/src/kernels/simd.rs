//! A vector of 16 f32 for the register-tiled kernels: one AVX-512 register, or two AVX2 ones,
//! so that each tile (the direct convolution's, Winograd's) is written once and compiled for
//! both instruction sets. Most laptop CPUs have AVX2 and no AVX-512: without these tiles they
//! fell back to im2col + gemm (`TESSERA_ISA=avx2 tessera bench kernels`, AMD EPYC Zen 4: a
//! 3x3 320->320 convolution at 64² 155 GFLOP/s through im2col + gemm; BENCHMARKS.md has the
//! AVX2 tiles' figures).
//!
//! The methods are `#[inline(always)]` and carry no target feature themselves: they are
//! inlined into the tile functions, which enable the instruction set they are compiled for.

use std::arch::x86_64::*;

/// 16 f32 values in registers. Every method needs the instruction set of its implementation.
pub(super) trait F32x16: Copy {
    /// Vectors of 16 a register tile of 6 rows holds per row: 4 on AVX-512 (24 accumulators
    /// of its 32 registers), 1 on AVX2 (12 of its 16).
    const TILE_VECTORS: usize;
    unsafe fn zero() -> Self;
    unsafe fn splat(x: f32) -> Self;
    unsafe fn load(p: *const f32) -> Self;
    /// The first `n` (< 16) values at `p`, zeros after; nothing past them is read.
    unsafe fn load_first(p: *const f32, n: usize) -> Self;
    unsafe fn store(self, p: *mut f32);
    /// Store the first `n` (< 16) values; nothing past them is written.
    unsafe fn store_first(self, p: *mut f32, n: usize);
    unsafe fn add(self, b: Self) -> Self;
    unsafe fn sub(self, b: Self) -> Self;
    unsafe fn mul(self, b: Self) -> Self;
    unsafe fn max(self, b: Self) -> Self;
    /// `self + a * b`, fused.
    unsafe fn mul_add(self, a: Self, b: Self) -> Self;
    /// `self - a * b`, fused.
    unsafe fn neg_mul_add(self, a: Self, b: Self) -> Self;
    /// The larger of `self` and `b` in the first `n` lanes (any `n`), `self` in the others.
    unsafe fn max_first(self, b: Self, n: usize) -> Self;
    /// Rounded to the nearest integer (ties to even).
    unsafe fn round(self) -> Self;
    /// `self · 2^n` for integer-valued `n` in -126..=127.
    unsafe fn scale_pow2(self, n: Self) -> Self;
    unsafe fn reduce_add(self) -> f32;
    unsafe fn reduce_max(self) -> f32;
    /// The even- and odd-indexed values of the 32 values `a` then `b`.
    unsafe fn deinterleave(a: Self, b: Self) -> (Self, Self);
    /// The inverse of [`F32x16::deinterleave`]: `a0 b0 a1 b1 .. a7 b7`, `a8 b8 .. a15 b15`.
    unsafe fn interleave(a: Self, b: Self) -> (Self, Self);

    /// The first `n` (1..=16) values: the whole vector when `n` is 16.
    #[inline(always)]
    unsafe fn load_n(p: *const f32, n: usize) -> Self {
        match n {
            16 => Self::load(p),
            _ => Self::load_first(p, n),
        }
    }

    #[inline(always)]
    unsafe fn store_n(self, p: *mut f32, n: usize) {
        match n {
            16 => self.store(p),
            _ => self.store_first(p, n),
        }
    }

    /// e^x for x ≤ 0 (scores less their max): [`super::math::exp`]'s range reduction and
    /// polynomial, lane by lane.
    #[inline(always)]
    unsafe fn exp(self) -> Self {
        let c = |v: f32| Self::splat(v);
        let x = self.max(c(-87.336_55));
        let n = x.mul(c(std::f32::consts::LOG2_E)).round();
        let r = x.neg_mul_add(n, c(0.693_359_4));
        let r = r.neg_mul_add(n, c(-2.121_944_4e-4));
        let mut p = c(1.987_569_1e-4);
        for k in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            5e-1,
        ] {
            p = c(k).mul_add(p, r);
        }
        r.add(c(1.0)).mul_add(p.mul(r), r).scale_pow2(n)
    }
}

fn mask16(n: usize) -> __mmask16 {
    ((1u32 << n) - 1) as __mmask16
}

impl F32x16 for __m512 {
    const TILE_VECTORS: usize = 4;
    #[inline(always)]
    unsafe fn zero() -> Self {
        _mm512_setzero_ps()
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        _mm512_set1_ps(x)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        _mm512_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn load_first(p: *const f32, n: usize) -> Self {
        _mm512_maskz_loadu_ps(mask16(n), p)
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        _mm512_storeu_ps(p, self)
    }
    #[inline(always)]
    unsafe fn store_first(self, p: *mut f32, n: usize) {
        _mm512_mask_storeu_ps(p, mask16(n), self)
    }
    #[inline(always)]
    unsafe fn add(self, b: Self) -> Self {
        _mm512_add_ps(self, b)
    }
    #[inline(always)]
    unsafe fn sub(self, b: Self) -> Self {
        _mm512_sub_ps(self, b)
    }
    #[inline(always)]
    unsafe fn mul(self, b: Self) -> Self {
        _mm512_mul_ps(self, b)
    }
    #[inline(always)]
    unsafe fn max(self, b: Self) -> Self {
        _mm512_max_ps(self, b)
    }
    #[inline(always)]
    unsafe fn mul_add(self, a: Self, b: Self) -> Self {
        _mm512_fmadd_ps(a, b, self)
    }
    #[inline(always)]
    unsafe fn neg_mul_add(self, a: Self, b: Self) -> Self {
        _mm512_fnmadd_ps(a, b, self)
    }
    #[inline(always)]
    unsafe fn max_first(self, b: Self, n: usize) -> Self {
        _mm512_mask_max_ps(self, mask16(n.min(16)), self, b)
    }
    #[inline(always)]
    unsafe fn round(self) -> Self {
        _mm512_roundscale_ps::<0x08>(self)
    }
    #[inline(always)]
    unsafe fn scale_pow2(self, n: Self) -> Self {
        _mm512_scalef_ps(self, n)
    }
    #[inline(always)]
    unsafe fn reduce_add(self) -> f32 {
        _mm512_reduce_add_ps(self)
    }
    #[inline(always)]
    unsafe fn reduce_max(self) -> f32 {
        _mm512_reduce_max_ps(self)
    }
    #[inline(always)]
    unsafe fn deinterleave(a: Self, b: Self) -> (Self, Self) {
        let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        (
            _mm512_permutex2var_ps(a, even, b),
            _mm512_permutex2var_ps(a, odd, b),
        )
    }
    #[inline(always)]
    unsafe fn interleave(a: Self, b: Self) -> (Self, Self) {
        let lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
        let hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
        (
            _mm512_permutex2var_ps(a, lo, b),
            _mm512_permutex2var_ps(a, hi, b),
        )
    }
}

/// Two AVX2 registers: values 0-7 and 8-15.
#[derive(Clone, Copy)]
pub(super) struct Avx2x16(__m256, __m256);

/// Lanes `0..n` of 8 set (`n` may be out of 0..8: clamped by the comparison).
#[inline(always)]
unsafe fn lanes(n: isize) -> __m256i {
    let n = n.clamp(0, 8) as i32;
    _mm256_cmpgt_epi32(
        _mm256_set1_epi32(n),
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
    )
}

/// Within each 8-lane half: the even values of `a` then `b` and their odd ones.
#[inline(always)]
unsafe fn split8(a: __m256, b: __m256) -> (__m256, __m256) {
    // Per 128-bit lane a0 a2 b0 b2 | a4 a6 b4 b6, then 64-bit pairs reordered 0 2 1 3.
    let even = _mm256_shuffle_ps::<0b10_00_10_00>(a, b);
    let odd = _mm256_shuffle_ps::<0b11_01_11_01>(a, b);
    let order =
        |x: __m256| _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(x)));
    (order(even), order(odd))
}

impl F32x16 for Avx2x16 {
    const TILE_VECTORS: usize = 1;
    #[inline(always)]
    unsafe fn zero() -> Self {
        Self(_mm256_setzero_ps(), _mm256_setzero_ps())
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        let v = _mm256_set1_ps(x);
        Self(v, v)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        Self(_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)))
    }
    #[inline(always)]
    unsafe fn load_first(p: *const f32, n: usize) -> Self {
        let n = n as isize;
        Self(
            _mm256_maskload_ps(p, lanes(n)),
            _mm256_maskload_ps(p.add(8), lanes(n - 8)),
        )
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        _mm256_storeu_ps(p, self.0);
        _mm256_storeu_ps(p.add(8), self.1);
    }
    #[inline(always)]
    unsafe fn store_first(self, p: *mut f32, n: usize) {
        let n = n as isize;
        _mm256_maskstore_ps(p, lanes(n), self.0);
        _mm256_maskstore_ps(p.add(8), lanes(n - 8), self.1);
    }
    #[inline(always)]
    unsafe fn add(self, b: Self) -> Self {
        Self(_mm256_add_ps(self.0, b.0), _mm256_add_ps(self.1, b.1))
    }
    #[inline(always)]
    unsafe fn sub(self, b: Self) -> Self {
        Self(_mm256_sub_ps(self.0, b.0), _mm256_sub_ps(self.1, b.1))
    }
    #[inline(always)]
    unsafe fn mul(self, b: Self) -> Self {
        Self(_mm256_mul_ps(self.0, b.0), _mm256_mul_ps(self.1, b.1))
    }
    #[inline(always)]
    unsafe fn max(self, b: Self) -> Self {
        Self(_mm256_max_ps(self.0, b.0), _mm256_max_ps(self.1, b.1))
    }
    #[inline(always)]
    unsafe fn mul_add(self, a: Self, b: Self) -> Self {
        Self(
            _mm256_fmadd_ps(a.0, b.0, self.0),
            _mm256_fmadd_ps(a.1, b.1, self.1),
        )
    }
    #[inline(always)]
    unsafe fn neg_mul_add(self, a: Self, b: Self) -> Self {
        Self(
            _mm256_fnmadd_ps(a.0, b.0, self.0),
            _mm256_fnmadd_ps(a.1, b.1, self.1),
        )
    }
    #[inline(always)]
    unsafe fn max_first(self, b: Self, n: usize) -> Self {
        let n = n.min(16) as isize;
        let pick = |x: __m256, y: __m256, m: __m256i| {
            _mm256_blendv_ps(x, _mm256_max_ps(x, y), _mm256_castsi256_ps(m))
        };
        Self(pick(self.0, b.0, lanes(n)), pick(self.1, b.1, lanes(n - 8)))
    }
    #[inline(always)]
    unsafe fn round(self) -> Self {
        const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
        Self(
            _mm256_round_ps::<NEAREST>(self.0),
            _mm256_round_ps::<NEAREST>(self.1),
        )
    }
    #[inline(always)]
    unsafe fn scale_pow2(self, n: Self) -> Self {
        // 2^n built in the exponent bits: n + 127 shifted into place.
        let pow2 = |n: __m256| {
            let e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
            _mm256_castsi256_ps(_mm256_slli_epi32::<23>(e))
        };
        Self(
            _mm256_mul_ps(self.0, pow2(n.0)),
            _mm256_mul_ps(self.1, pow2(n.1)),
        )
    }
    #[inline(always)]
    unsafe fn reduce_add(self) -> f32 {
        let v = _mm256_add_ps(self.0, self.1);
        let v = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let v = _mm_add_ps(v, _mm_movehl_ps(v, v));
        _mm_cvtss_f32(_mm_add_ss(v, _mm_movehdup_ps(v)))
    }
    #[inline(always)]
    unsafe fn reduce_max(self) -> f32 {
        let v = _mm256_max_ps(self.0, self.1);
        let v = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let v = _mm_max_ps(v, _mm_movehl_ps(v, v));
        _mm_cvtss_f32(_mm_max_ss(v, _mm_movehdup_ps(v)))
    }
    #[inline(always)]
    unsafe fn deinterleave(a: Self, b: Self) -> (Self, Self) {
        let (even_a, odd_a) = split8(a.0, a.1);
        let (even_b, odd_b) = split8(b.0, b.1);
        (Self(even_a, even_b), Self(odd_a, odd_b))
    }
    #[inline(always)]
    unsafe fn interleave(a: Self, b: Self) -> (Self, Self) {
        let zip = |x: __m256, y: __m256| {
            let (lo, hi) = (_mm256_unpacklo_ps(x, y), _mm256_unpackhi_ps(x, y));
            (
                _mm256_permute2f128_ps::<0x20>(lo, hi),
                _mm256_permute2f128_ps::<0x31>(lo, hi),
            )
        };
        let (first, second) = (zip(a.0, b.0), zip(a.1, b.1));
        (Self(first.0, first.1), Self(second.0, second.1))
    }
}

#[cfg(test)]
#[path = "simd_tests.rs"]
mod tests;
