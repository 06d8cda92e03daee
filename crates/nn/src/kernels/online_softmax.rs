//! The online softmax of flash attention: each query row's running max, running sum and
//! unnormalised output, folded chunk by chunk of scores (so no row of scores is ever whole).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

#[cfg(target_arch = "x86_64")]
use super::math::exp;
#[cfg(target_arch = "x86_64")]
use super::simd::F32x16;

/// `e^(v - shift)` of a row in place, returning the sum ([`F32x16::exp`]: on AVX-512 the
/// power of two is one `vscalefps`).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn exp_shifted<S: F32x16>(row: &mut [f32], shift: f32) -> f32 {
    let (mut s0, mut s1) = (S::zero(), S::zero());
    let shift = S::splat(shift);
    let ptr = row.as_mut_ptr();
    let n = row.len();
    let mut j = 0;
    while j + 32 <= n {
        let a = S::load(ptr.add(j)).sub(shift).exp();
        let b = S::load(ptr.add(j + 16)).sub(shift).exp();
        a.store(ptr.add(j));
        b.store(ptr.add(j + 16));
        s0 = s0.add(a);
        s1 = s1.add(b);
        j += 32;
    }
    while j < n {
        let k = (n - j).min(16);
        // Lanes past the row are stored nowhere, and kept out of the sum: the first k lanes
        // of max(0, a) are a's (every e^x is positive), the others 0.
        let a = S::load_n(ptr.add(j), k).sub(shift).exp();
        a.store_n(ptr.add(j), k);
        s0 = s0.add(S::zero().max_first(a, k));
        j += k;
    }
    s0.add(s1).reduce_add()
}

/// The largest value of a row (negative infinity for an empty one).
///
/// # Safety
/// AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn row_max(row: &[f32]) -> f32 {
    let mut m = _mm512_set1_ps(f32::NEG_INFINITY);
    for chunk in row.chunks(16) {
        let mask: __mmask16 = ((1u32 << chunk.len()) - 1) as u16;
        m = _mm512_mask_max_ps(m, mask, m, _mm512_maskz_loadu_ps(mask, chunk.as_ptr()));
    }
    _mm512_reduce_max_ps(m)
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) unsafe fn row_max(row: &[f32]) -> f32 {
    row.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

/// The online softmax of a block of queries: running max, running sum, unnormalised output.
pub(crate) struct State {
    m: Vec<f32>,
    pub(crate) l: Vec<f32>,
    pub(crate) o: Vec<f32>,
    dv: usize,
}

impl State {
    pub(crate) fn new(rows: usize, dv: usize) -> Self {
        Self {
            m: vec![f32::NEG_INFINITY; rows],
            l: vec![0.0; rows],
            o: vec![0.0; rows * dv],
            dv,
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    pub(crate) unsafe fn fold(&mut self, _: usize, _: &mut [f32], _: f32) {
        unreachable!("flash attention is only chosen on x86_64 with AVX2 or AVX-512")
    }

    /// [`State::fold_with`] on AVX-512 (the bf16 kernels' path).
    ///
    /// # Safety
    /// AVX-512F.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn fold(&mut self, i: usize, s: &mut [f32], chunk_max: f32) {
        self.fold_with::<std::arch::x86_64::__m512>(i, s, chunk_max)
    }

    /// Fold a chunk of row `i`'s scores (whose largest is `chunk_max`) in: they become
    /// `e^(s - max)`, and what was accumulated is rescaled to the new max.
    ///
    /// # Safety
    /// The instruction set of `S`.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    pub(super) unsafe fn fold_with<S: F32x16>(&mut self, i: usize, s: &mut [f32], chunk_max: f32) {
        let new = self.m[i].max(chunk_max);
        let correction = exp(self.m[i] - new);
        let sum = exp_shifted::<S>(s, new);
        self.l[i] = self.l[i] * correction + sum;
        if correction != 1.0 {
            self.o[i * self.dv..(i + 1) * self.dv]
                .iter_mut()
                .for_each(|o| *o *= correction);
        }
        self.m[i] = new;
    }
}
