//! [`super::flash`]'s attention with bf16 products, for the bf16 compute path on CPUs with
//! AVX512_BF16: queries, scaled keys, probabilities and values are rounded to bf16 and
//! multiplied by [`super::bf16::Tile`] (pairs of channels for the scores, pairs of keys for the
//! values); scores, the online softmax and the output stay f32.

use super::attention::Shape;
use super::bf16::{pair, pair_rows, pairs_of, Tile, PANEL, ROWS as R};
use super::online_softmax::{row_max, State};

/// Queries per block (as [`super::flash`]'s tasks).
const QB: usize = 96;
/// Bytes of keys + values per chunk: about a third of an L2 cache.
const CHUNK_BYTES: usize = 384 << 10;

/// `out = softmax(scale · q kᵀ) v` per (batch, head), as [`super::flash::attention`]; needs
/// [`super::bf16::available`].
pub fn attention(q: &[f32], k: &[f32], v: &[f32], s: Shape, scale: f32, out: &mut [f32]) {
    super::flash::per_head(q, s, out, |b, h| {
        let at = |j: usize| (b * s.m + j) * s.heads * s.d + h * s.d;
        Keys::new(s.d, s.m, scale, |j| {
            (&k[at(j)..][..s.d], &v[at(j)..][..s.d])
        })
    })
}

impl super::flash::HeadKeys for Keys {
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

/// One head's keys (scaled) as panels of [`PANEL`] keys, `(d/2, PANEL)` pairs of channels, and
/// its values as `(m/2, dv)` pairs of keys, `dv` = d padded to 16; zero past the ends. Half
/// the bytes of [`super::flash::Keys`]: the tiled VAE holds a 2K picture's keys and values in
/// 128 MiB instead of 256.
pub struct Keys {
    kt: Vec<u32>,
    vp: Vec<u32>,
    d: usize,
    d2: usize,
    dv: usize,
    m: usize,
    scale: f32,
}

impl Keys {
    /// Room for `m` keys and values of `d` channels, all zero, to be [`Keys::set`].
    pub fn empty(d: usize, m: usize, scale: f32) -> Self {
        let (d2, dv) = (d.div_ceil(2), d.div_ceil(16) * 16);
        Self {
            kt: vec![0u32; m.div_ceil(PANEL) * d2 * PANEL],
            vp: vec![0u32; m.div_ceil(2) * dv],
            d,
            d2,
            dv,
            m,
            scale,
        }
    }

    fn new<'a>(
        d: usize,
        m: usize,
        scale: f32,
        key_value: impl Fn(usize) -> (&'a [f32], &'a [f32]),
    ) -> Self {
        let mut keys = Self::empty(d, m, scale);
        for j in 0..m {
            keys.set_key(j, key_value(j).0);
        }
        // Values two keys at a time, vectorised (`set` writes one half of a pair).
        for (jp, row) in keys.vp.chunks_mut(keys.dv).enumerate() {
            let lo = key_value(2 * jp).1;
            let hi = (2 * jp + 1 < m).then(|| key_value(2 * jp + 1).1);
            pair_rows(lo, hi, &mut row[..d]);
        }
        keys
    }

    fn set_key(&mut self, j: usize, key: &[f32]) {
        let at = |i: usize| key.get(i).copied().unwrap_or(0.0) * self.scale;
        let panel = &mut self.kt[j / PANEL * self.d2 * PANEL..][..self.d2 * PANEL];
        for t in 0..self.d2 {
            panel[t * PANEL + j % PANEL] = pair(at(2 * t), at(2 * t + 1));
        }
    }

    /// Key and value `j` (each `d` values), rounded to bf16.
    pub fn set(&mut self, j: usize, key: &[f32], value: &[f32]) {
        self.set_key(j, key);
        // Value j is the low (even j) or high (odd j) half of row j/2's pairs.
        let shift = 16 * (j % 2);
        let row = &mut self.vp[j / 2 * self.dv..][..self.d];
        for (p, &x) in row.iter_mut().zip(value) {
            let bits = u32::from(half::bf16::from_f32(x).to_bits());
            *p = (*p & !(0xffff << shift)) | (bits << shift);
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        4 * (self.kt.len() + self.vp.len())
    }

    /// Attention of the queries `q` (`d` values each) into `out`, blocks of [`QB`] queries
    /// spread over rayon's threads. Needs [`super::bf16::available`].
    pub fn attend_all(&self, q: &[f32], out: &mut [f32]) {
        super::flash::attend_all(self, self.d, q, out)
    }

    /// Attention of `rows` queries (`query(i)`) into `out(i)`, on the calling thread.
    fn attend<'o>(
        &self,
        rows: usize,
        query: impl Fn(usize) -> &'o [f32],
        out: impl Fn(usize) -> &'o mut [f32],
    ) {
        let chunk = (CHUNK_BYTES / (2 * (self.d + self.dv)) / PANEL * PANEL)
            .max(PANEL)
            .min(self.m.div_ceil(PANEL) * PANEL);
        let mut scores = vec![0f32; R * chunk];
        let mut probs = vec![0u32; R * chunk / 2];
        let mut qp = vec![0u32; QB * self.d2];
        for q0 in (0..rows).step_by(QB) {
            let n = QB.min(rows - q0);
            for (i, row) in qp.chunks_mut(self.d2).take(n).enumerate() {
                pairs_of(query(q0 + i), row);
            }
            let mut state = State::new(n, self.dv);
            for j0 in (0..self.m).step_by(chunk) {
                let len = chunk.min(self.m - j0);
                for i0 in (0..n).step_by(R) {
                    let live = R.min(n - i0);
                    let a =
                        std::array::from_fn(|r| qp[(i0 + r.min(live - 1)) * self.d2..].as_ptr());
                    for j in (0..len).step_by(PANEL) {
                        let tile = Tile::<R> {
                            a,
                            a_step: 1,
                            b: self.kt[(j0 + j) / PANEL * self.d2 * PANEL..].as_ptr(),
                            b_step: PANEL,
                            steps: self.d2,
                            taps: &[(0, 0)],
                            dst: scores[j..].as_mut_ptr(),
                            ld: chunk,
                            rows: live,
                            cols: PANEL.min(len - j),
                            add: false,
                        };
                        // SAFETY: checked by the caller (AVX512_BF16); panels are whole.
                        unsafe { tile.run::<4>() };
                    }
                    for r in 0..live {
                        let s = &mut scores[r * chunk..r * chunk + len];
                        // SAFETY: AVX-512F, implied by AVX512_BF16.
                        unsafe { state.fold(i0 + r, s, row_max(s)) };
                        pairs_of(s, &mut probs[r * chunk / 2..][..len.div_ceil(2)]);
                    }
                    self.values(&probs, chunk, j0, len, &mut state, i0, live);
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

    /// `o[i0 + r] += p[r] · v[j0..j0+len]` for the live rows.
    #[allow(clippy::too_many_arguments)]
    fn values(
        &self,
        probs: &[u32],
        chunk: usize,
        j0: usize,
        len: usize,
        state: &mut State,
        i0: usize,
        live: usize,
    ) {
        let a = std::array::from_fn(|r| probs[r.min(live - 1) * chunk / 2..].as_ptr());
        let mut c0 = 0;
        while c0 < self.dv {
            let nv = ((self.dv - c0) / 16).min(4);
            let tile = Tile::<R> {
                a,
                a_step: 1,
                b: self.vp[j0 / 2 * self.dv + c0..].as_ptr(),
                b_step: self.dv,
                steps: len.div_ceil(2),
                taps: &[(0, 0)],
                dst: state.o[i0 * self.dv + c0..].as_mut_ptr(),
                ld: self.dv,
                rows: live,
                cols: 16 * nv,
                add: true,
            };
            // SAFETY: checked by the caller (AVX512_BF16); nv vectors stay within a row.
            unsafe {
                match nv {
                    4 => tile.run::<4>(),
                    3 => tile.run::<3>(),
                    2 => tile.run::<2>(),
                    _ => tile.run::<1>(),
                }
            }
            c0 += 16 * nv;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys set one at a time, in any order (as the tiled VAE fills them band by band), are
    /// laid out as those built at once, and `attend_all` gives `attend`'s rows.
    #[test]
    fn keys_set_one_by_one_equal_keys_built_at_once() {
        let val = crate::kernels::test_values;
        for (m, d) in [(131, 40), (70, 13)] {
            let (k, v) = (val(m * d, 4), val(m * d, 5));
            let row = |x: &[f32], j: usize| x[j * d..(j + 1) * d].to_vec();
            let whole = Keys::new(d, m, 0.7, |j| {
                (&k[j * d..(j + 1) * d], &v[j * d..(j + 1) * d])
            });
            let mut one_by_one = Keys::empty(d, m, 0.7);
            for j in (0..m).rev() {
                one_by_one.set(j, &row(&k, j), &row(&v, j));
            }
            assert_eq!(whole.kt, one_by_one.kt, "keys, m {m} d {d}");
            assert_eq!(whole.vp, one_by_one.vp, "values, m {m} d {d}");
            if crate::kernels::bf16::available() {
                let n = 200;
                let q = val(n * d, 6);
                let (mut all, mut rows) = (vec![f32::NAN; n * d], vec![f32::NAN; n * d]);
                one_by_one.attend_all(&q, &mut all);
                let ptr = rows.as_mut_ptr();
                // SAFETY: row i of `rows`, each handed out once.
                let out = |i: usize| unsafe { std::slice::from_raw_parts_mut(ptr.add(i * d), d) };
                whole.attend(n, |i| &q[i * d..(i + 1) * d], out);
                assert_eq!(all, rows, "attend_all against attend, m {m} d {d}");
            }
        }
    }

    /// Odd key counts, several chunks and panels, heads of the UNet's width and odd widths:
    /// within the rounding of queries, keys, probabilities and values to bf16 of the exact
    /// attention (an error of 2^-8 of each factor, 2^-6 of the result allowed).
    #[test]
    fn bf16_attention_is_the_softmax_within_rounding() {
        if !crate::kernels::bf16::available() {
            eprintln!("this CPU has no AVX512_BF16: the bf16 kernels cannot run here");
            return;
        }
        let val = crate::kernels::test_values;
        for (n, m, heads, d) in [(13, 300, 2, 40), (100, 5000, 1, 40), (7, 77, 3, 13)] {
            let s = Shape {
                batch: 2,
                n,
                m,
                heads,
                d,
            };
            let c = heads * d;
            let (q, k, v) = (val(2 * n * c, 1), val(2 * m * c, 2), val(2 * m * c, 3));
            let scale = 0.3f32;
            let mut got = vec![f32::NAN; q.len()];
            attention(&q, &k, &v, s, scale, &mut got);
            let want = crate::kernels::tests::reference_attention(&q, &k, &v, s, scale);
            let worst = crate::kernels::tests::worst_error(&got, &want);
            assert!(worst < 1.0 / 64.0, "{n}x{m}, {heads}x{d}: {worst}");
            eprintln!("{n}x{m}, {heads}x{d}: largest error {worst:.2e}");
        }
    }
}
