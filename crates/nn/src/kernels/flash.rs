//! Attention without score matrices in memory, for CPUs with AVX2 or AVX-512 (flash
//! attention): for each (batch, head) and block of queries, keys and values are visited in
//! chunks that stay in cache; each chunk's scores for 6 queries at a time are computed by a
//! register tile (6 rows x 64 keys on AVX-512, 24 accumulators, x 16 keys on AVX2: the shape of
//! a 1x1 convolution over the transposed keys), folded into a running max and sum (online
//! softmax), and multiplied into the values by a second register tile (6 rows x 64 or 16 value
//! columns). Only the transposed keys and the values padded to 16 columns are laid out once
//! per call; no gemm packing, no pass over full rows.
//!
//! Used where [`applies`]; elsewhere [`super::attention`] (query blocks over gemm).

#[cfg(target_arch = "x86_64")]
use super::simd::{Avx2x16, F32x16};
use super::{Isa, SharedOut};
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::__m512;

use super::attention::Shape;
use super::online_softmax::State;

use rayon::prelude::*;

/// Keys per panel of transposed keys: one score tile's width (on AVX2 a tile is 16 keys wide,
/// and its panels too: four tiles striding through 64-key panels streamed a `d = 512` panel
/// from L2 four times, 142 against 183 GFLOP/s).
fn panel_width() -> usize {
    match super::isa() {
        Isa::Avx512 => 64,
        _ => 16,
    }
}
/// Queries per register tile.
const R: usize = 6;
/// Queries per task (16 tiles), sharing each key chunk while it is in cache.
const QB: usize = 96;
/// Floats of keys + values per chunk: about half an L2 cache.
const CHUNK_FLOATS: usize = 96 << 10;

pub fn applies() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::isa() >= Isa::Avx2
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `out = softmax(scale · q kᵀ) v` per (batch, head), as [`super::attention::attention`].
pub fn attention(q: &[f32], k: &[f32], v: &[f32], s: Shape, scale: f32, out: &mut [f32]) {
    per_head(q, s, out, |b, h| {
        let mut keys = Keys::new(s.d, s.m, scale);
        for j in 0..s.m {
            let at = (b * s.m + j) * s.heads * s.d + h * s.d;
            keys.set(j, &k[at..at + s.d], &v[at..at + s.d]);
        }
        keys
    })
}

/// One head's keys and values, laid out for a kernel, attended by blocks of queries.
pub(crate) trait HeadKeys: Send + Sync {
    /// Attention of `rows` queries (`query(i)`) into `out(i)`, on the calling thread.
    fn attend_rows<'o>(
        &self,
        rows: usize,
        query: &(dyn Fn(usize) -> &'o [f32] + Sync),
        out: &dyn Fn(usize) -> &'o mut [f32],
    ) where
        Self: 'o;
}

/// Attention of the queries `q` (`d` values each) against one head's `keys` into `out`, blocks
/// of [`QB`] queries spread over rayon's threads (the tiled VAE's bands of queries).
pub(crate) fn attend_all(keys: &impl HeadKeys, d: usize, q: &[f32], out: &mut [f32]) {
    out.par_chunks_mut(QB * d)
        .zip(q.par_chunks(QB * d))
        .for_each(|(o, q)| {
            let rows = q.len() / d;
            let dst = SharedOut::new(o);
            // SAFETY: row i of this block's output, each written once.
            let orow =
                |i: usize| unsafe { std::slice::from_raw_parts_mut(dst.ptr().add(i * d), d) };
            keys.attend_rows(rows, &|i| &q[i * d..(i + 1) * d], &orow);
        });
}

/// Attention per (batch, head) of token rows `(B, N, heads·d)`: `keys(b, h)` lays out one
/// head's keys once, then blocks of [`QB`] queries attend to them over rayon's threads.
pub(crate) fn per_head<K: HeadKeys>(
    q: &[f32],
    s: Shape,
    out: &mut [f32],
    keys: impl Fn(usize, usize) -> K + Sync + Send,
) {
    let c = s.heads * s.d;
    let pairs = s.batch * s.heads;
    let keys: Vec<K> = (0..pairs)
        .into_par_iter()
        .map(|p| keys(p / s.heads, p % s.heads))
        .collect();
    let blocks = s.n.div_ceil(QB);
    let dst = SharedOut::new(out);
    (0..pairs * blocks).into_par_iter().for_each(|task| {
        let (p, blk) = (task / blocks, task % blocks);
        let (b, h) = (p / s.heads, p % s.heads);
        let q0 = blk * QB;
        let rows = QB.min(s.n - q0);
        let qrow = |i: usize| &q[(b * s.n + q0 + i) * c + h * s.d..][..s.d];
        // SAFETY: this task's query rows of head h, written by no other task.
        let orow = |i: usize| unsafe {
            std::slice::from_raw_parts_mut(dst.ptr().add((b * s.n + q0 + i) * c + h * s.d), s.d)
        };
        keys[p].attend_rows(rows, &qrow, &orow);
    });
}

impl HeadKeys for Keys {
    fn attend_rows<'o>(
        &self,
        rows: usize,
        query: &(dyn Fn(usize) -> &'o [f32] + Sync),
        out: &dyn Fn(usize) -> &'o mut [f32],
    ) where
        Self: 'o,
    {
        self.attend(rows, query, out)
    }
}

/// Keys and values of one head laid out for the tiles: keys scaled and transposed in panels of
/// [`panel_width`] keys (`d x panel` each, so a tile reads one contiguous stream; transposed whole,
/// rows `4 m` bytes apart mapped onto the same L1 sets at 4096 tokens and the kernel stalled
/// on its key loads), values padded to 16 columns (`m x dv`). Built once, then attended by any
/// number of query blocks (the tiled VAE fills it band by band).
pub struct Keys {
    kt: Vec<f32>,
    vp: Vec<f32>,
    d: usize,
    dv: usize,
    m: usize,
    panels: usize,
    /// Keys per panel ([`panel_width`] when laid out).
    panel: usize,
    scale: f32,
}

impl Keys {
    pub fn new(d: usize, m: usize, scale: f32) -> Self {
        let panel = panel_width();
        let (panels, dv) = (m.div_ceil(panel), d.div_ceil(16) * 16);
        Self {
            kt: vec![0f32; d * panels * panel],
            vp: vec![0f32; m * dv],
            d,
            dv,
            m,
            panels,
            panel,
            scale,
        }
    }

    /// Key and value `j` (each `d` values).
    pub fn set(&mut self, j: usize, key: &[f32], value: &[f32]) {
        let p = self.panel;
        let panel = &mut self.kt[j / p * self.d * p..][..self.d * p];
        for (t, &x) in key.iter().enumerate() {
            panel[t * p + j % p] = x * self.scale;
        }
        self.vp[j * self.dv..j * self.dv + self.d].copy_from_slice(value);
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        4 * (self.kt.len() + self.vp.len())
    }

    /// Attention of the queries `q` (`d` values each) into `out` (see [`attend_all`]).
    pub fn attend_all(&self, q: &[f32], out: &mut [f32]) {
        attend_all(self, self.d, q, out)
    }

    /// Attention of `rows` queries (`query(i)`, `d` values each) written to `out(i)`, on the
    /// calling thread, in blocks of [`QB`] queries.
    pub fn attend<'o>(
        &self,
        rows: usize,
        query: impl Fn(usize) -> &'o [f32] + Sync,
        out: impl Fn(usize) -> &'o mut [f32],
    ) where
        Self: 'o,
    {
        // The tiles that fit the panels, chosen when the keys were laid out.
        // SAFETY: `applies` was checked by the caller (AVX2 or wider); 64-key panels were laid
        // out only where the CPU has AVX-512.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            match self.panel {
                64 => self.attend_avx512(rows, query, out),
                _ => self.attend_avx2(rows, query, out),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("flash attention is only chosen on x86_64 with AVX2 or AVX-512: {rows}");
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn attend_avx512<'o>(
        &self,
        rows: usize,
        query: impl Fn(usize) -> &'o [f32] + Sync,
        out: impl Fn(usize) -> &'o mut [f32],
    ) where
        Self: 'o,
    {
        self.attend_with::<__m512>(rows, query, out)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn attend_avx2<'o>(
        &self,
        rows: usize,
        query: impl Fn(usize) -> &'o [f32] + Sync,
        out: impl Fn(usize) -> &'o mut [f32],
    ) where
        Self: 'o,
    {
        self.attend_with::<Avx2x16>(rows, query, out)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn attend_with<'o, S: F32x16>(
        &self,
        rows: usize,
        query: impl Fn(usize) -> &'o [f32] + Sync,
        out: impl Fn(usize) -> &'o mut [f32],
    ) where
        Self: 'o,
    {
        let p = self.panel;
        let chunk = (CHUNK_FLOATS / (self.d + self.dv) / 64 * 64)
            .max(64)
            .min(self.panels * p);
        let mut scores = vec![0f32; R * chunk];
        for q0 in (0..rows).step_by(QB) {
            let n = QB.min(rows - q0);
            let mut state = State::new(n, self.dv);
            for j0 in (0..self.m).step_by(chunk) {
                let len = chunk.min(self.m - j0);
                for i0 in (0..n).step_by(R) {
                    let qs: [&[f32]; R] = std::array::from_fn(|r| query(q0 + (i0 + r).min(n - 1)));
                    let max = self.scores::<S>(&qs, j0, len, &mut scores);
                    let live = R.min(n - i0);
                    for (r, &m) in max.iter().enumerate().take(live) {
                        let s = &mut scores[r * chunk..r * chunk + len];
                        state.fold_with::<S>(i0 + r, s, m);
                    }
                    self.values::<S>(&scores, chunk, j0, len, &mut state, i0, live);
                }
            }
            for i in 0..n {
                let inv = 1.0 / state.l[i];
                for (o, &a) in out(q0 + i).iter_mut().zip(&state.o[i * self.dv..]) {
                    *o = a * inv;
                }
            }
        }
    }
}

/// The register tiles, for any [`F32x16`]: 6 queries x 16·V keys, 6 queries x 16·V value
/// columns (V up to [`F32x16::TILE_VECTORS`]).
#[cfg(target_arch = "x86_64")]
impl Keys {
    /// Scores of R queries against keys j0..j0+len into `out` (R rows of `chunk`); returns
    /// each row's largest score.
    #[inline(always)]
    unsafe fn scores<S: F32x16>(
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
    unsafe fn values<S: F32x16>(
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

#[cfg(test)]
#[path = "flash_tests.rs"]
mod tests;
