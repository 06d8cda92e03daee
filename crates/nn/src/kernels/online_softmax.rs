//! The online softmax of flash attention: each query row's running max, running sum and
//! unnormalised output, folded chunk by chunk of scores (so no row of scores is ever whole).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

#[cfg(target_arch = "x86_64")]
use super::math::exp;

/// `e^(v - shift)` of a row in place, returning the sum: AVX-512 with `vscalefps` for the
/// power of two (fewer instructions than the portable [`super::math::exp`], same polynomial).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn exp_shifted_512(row: &mut [f32], shift: f32) -> f32 {
    let c = |v: f32| _mm512_set1_ps(v);
    let exp = |x: __m512| {
        let x = _mm512_max_ps(x, c(-87.336_55));
        let n = _mm512_roundscale_ps::<0x08>(_mm512_mul_ps(x, c(std::f32::consts::LOG2_E)));
        let r = _mm512_fnmadd_ps(n, c(0.693_359_4), x);
        let r = _mm512_fnmadd_ps(n, c(-2.121_944_4e-4), r);
        let mut p = c(1.987_569_1e-4);
        for k in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            5e-1,
        ] {
            p = _mm512_fmadd_ps(p, r, c(k));
        }
        let p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, c(1.0)));
        _mm512_scalef_ps(p, n)
    };
    let (mut s0, mut s1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    let shift = c(shift);
    let ptr = row.as_mut_ptr();
    let n = row.len();
    let mut j = 0;
    while j + 32 <= n {
        let a = exp(_mm512_sub_ps(_mm512_loadu_ps(ptr.add(j)), shift));
        let b = exp(_mm512_sub_ps(_mm512_loadu_ps(ptr.add(j + 16)), shift));
        _mm512_storeu_ps(ptr.add(j), a);
        _mm512_storeu_ps(ptr.add(j + 16), b);
        s0 = _mm512_add_ps(s0, a);
        s1 = _mm512_add_ps(s1, b);
        j += 32;
    }
    while j < n {
        let k = (n - j).min(16);
        let mask: __mmask16 = if k == 16 { 0xffff } else { (1u16 << k) - 1 };
        let a = exp(_mm512_sub_ps(
            _mm512_maskz_loadu_ps(mask, ptr.add(j)),
            shift,
        ));
        _mm512_mask_storeu_ps(ptr.add(j), mask, a);
        s0 = _mm512_add_ps(s0, _mm512_maskz_mov_ps(mask, a));
        j += k;
    }
    _mm512_reduce_add_ps(_mm512_add_ps(s0, s1))
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
        unreachable!("flash attention is only chosen on x86_64 with AVX-512")
    }

    /// Fold a chunk of row `i`'s scores (whose largest is `chunk_max`) in: they become
    /// `e^(s - max)`, and what was accumulated is rescaled to the new max.
    ///
    /// # Safety
    /// AVX-512F.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn fold(&mut self, i: usize, s: &mut [f32], chunk_max: f32) {
        let new = self.m[i].max(chunk_max);
        let correction = exp(self.m[i] - new);
        let sum = exp_shifted_512(s, new);
        self.l[i] = self.l[i] * correction + sum;
        if correction != 1.0 {
            self.o[i * self.dv..(i + 1) * self.dv]
                .iter_mut()
                .for_each(|o| *o *= correction);
        }
        self.m[i] = new;
    }
}
