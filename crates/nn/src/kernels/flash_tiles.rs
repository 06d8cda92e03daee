//! The flash kernel's register tiles, for any [`F32x16`]: scores of 6 queries against 16·V
//! keys of a panel, and 6 queries' outputs over 16·V value columns (V up to
//! [`F32x16::TILE_VECTORS`]).

use super::{Keys, State, R};
use crate::kernels::simd::F32x16;

impl Keys {
    /// Scores of R queries against keys j0..j0+len into `out` (R rows of `chunk`); returns
    /// each row's largest score.
    #[inline(always)]
    pub(super) unsafe fn scores<S: F32x16>(
        &self,
        qs: &[&[f32]; R],
        j0: usize,
        len: usize,
        out: &mut [f32],
    ) -> [f32; R] {
        let chunk = out.len() / R;
        let mut max = [S::splat(f32::NEG_INFINITY); R];
        let step = 16 * S::TILE_VECTORS;
        for j in (0..len).step_by(step) {
            let at = out.as_mut_ptr().add(j);
            let valid = len - j;
            match valid.div_ceil(16).min(S::TILE_VECTORS) {
                4 => self.score_tile::<S, 4>(qs, j0 + j, at, chunk, valid, &mut max),
                3 => self.score_tile::<S, 3>(qs, j0 + j, at, chunk, valid, &mut max),
                2 => self.score_tile::<S, 2>(qs, j0 + j, at, chunk, valid, &mut max),
                _ => self.score_tile::<S, 1>(qs, j0 + j, at, chunk, valid, &mut max),
            }
        }
        max.map(|m| m.reduce_max())
    }

    /// R queries x 16·V keys from key `j` (16·V keys within one panel), stored at `out` (rows
    /// `chunk` apart); the first `valid` keys count towards each row's running `max`.
    #[inline(always)]
    unsafe fn score_tile<S: F32x16, const V: usize>(
        &self,
        qs: &[&[f32]; R],
        j: usize,
        out: *mut f32,
        chunk: usize,
        valid: usize,
        max: &mut [S; R],
    ) {
        let mut acc = [[S::zero(); V]; R];
        let p = self.panel;
        let base = self.kt.as_ptr().add(j / p * self.d * p + j % p);
        for t in 0..self.d {
            let row = base.add(t * p);
            let kv: [S; V] = std::array::from_fn(|i| S::load(row.add(16 * i)));
            for (a, q) in acc.iter_mut().zip(qs) {
                let b = S::splat(*q.get_unchecked(t));
                for (a, k) in a.iter_mut().zip(kv) {
                    *a = a.mul_add(b, k);
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            for (i, a) in a.iter().enumerate() {
                a.store(out.add(r * chunk + 16 * i));
                max[r] = max[r].max_first(*a, valid.saturating_sub(16 * i));
            }
        }
    }

    /// `o[i0 + r] += p[r] · v[j0..j0+len]` for the live rows.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn values<S: F32x16>(
        &self,
        p: &[f32],
        chunk: usize,
        j0: usize,
        len: usize,
        state: &mut State,
        i0: usize,
        live: usize,
    ) {
        let mut c0 = 0;
        while c0 < self.dv {
            let nv = ((self.dv - c0) / 16).min(S::TILE_VECTORS);
            let o = state.o.as_mut_ptr().add(i0 * self.dv + c0);
            match nv {
                4 => self.value_tile::<S, 4>(p, chunk, j0, len, o, live, c0),
                3 => self.value_tile::<S, 3>(p, chunk, j0, len, o, live, c0),
                2 => self.value_tile::<S, 2>(p, chunk, j0, len, o, live, c0),
                _ => self.value_tile::<S, 1>(p, chunk, j0, len, o, live, c0),
            }
            c0 += 16 * nv;
        }
    }

    /// Value columns c0..c0+16·V of the live rows: accumulate onto `o` (rows `dv` apart).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn value_tile<S: F32x16, const V: usize>(
        &self,
        p: &[f32],
        chunk: usize,
        j0: usize,
        len: usize,
        o: *mut f32,
        live: usize,
        c0: usize,
    ) {
        let dv = self.dv;
        let mut acc = [[S::zero(); V]; R];
        for (r, a) in acc.iter_mut().enumerate().take(live) {
            for (i, a) in a.iter_mut().enumerate() {
                *a = S::load(o.add(r * dv + 16 * i));
            }
        }
        let pp = p.as_ptr();
        for j in 0..len {
            let row = self.vp.as_ptr().add((j0 + j) * dv + c0);
            let vv: [S; V] = std::array::from_fn(|i| S::load(row.add(16 * i)));
            for (r, a) in acc.iter_mut().enumerate() {
                let b = S::splat(*pp.add(r * chunk + j));
                for (a, v) in a.iter_mut().zip(vv) {
                    *a = a.mul_add(b, v);
                }
            }
        }
        for (r, a) in acc.iter().enumerate().take(live) {
            for (i, a) in a.iter().enumerate() {
                a.store(o.add(r * dv + 16 * i));
            }
        }
    }
}
