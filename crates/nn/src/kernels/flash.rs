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

#[cfg(target_arch = "x86_64")]
#[path = "flash_tiles.rs"]
mod tiles;

#[cfg(test)]
#[path = "flash_tests.rs"]
mod tests;
