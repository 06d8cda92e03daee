//! Softmax attention over strided heads: queries `(B, N, C)`, keys and values `(B, M, C)`,
//! head `h` in columns `h·d..(h+1)·d`, written to `(B, N, C)` the same way, so splitting and
//! merging heads costs no transposes. Each (batch, head) pair is one task on one thread;
//! queries go in blocks whose scores (f32) fit the budget, each block a gemm, an in-place
//! row softmax and a gemm.

use super::gemm::{sgemm_serial, View};
use super::math::exp_row;
use super::SharedOut;
use rayon::prelude::*;

/// Shapes of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub batch: usize,
    /// Queries per batch item.
    pub n: usize,
    /// Keys per batch item.
    pub m: usize,
    pub heads: usize,
    /// Channels per head.
    pub d: usize,
}

/// Most queries per block: measured best on SD 1.5's 4096-token windows (2-core Xeon, AVX-512:
/// 64 to 512 rows within 10%, the whole 4096 at once 35% slower, its scores out of cache).
const MAX_BLOCK: usize = 256;

/// `out = softmax(scale · q kᵀ) v` per (batch, head); at most `budget` bytes of scores alive
/// over all threads.
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    s: Shape,
    scale: f32,
    budget: usize,
    out: &mut [f32],
) {
    let c = s.heads * s.d;
    debug_assert_eq!(q.len(), s.batch * s.n * c);
    debug_assert_eq!(k.len(), s.batch * s.m * c);
    debug_assert_eq!(out.len(), s.batch * s.n * c);
    let threads = rayon::current_num_threads().max(1);
    let block = (budget / threads / (4 * s.m).max(1))
        .clamp(1, s.n)
        .min(MAX_BLOCK);
    let dst = SharedOut::new(out);
    (0..s.batch * s.heads).into_par_iter().for_each(|task| {
        let (b, h) = (task / s.heads, task % s.heads);
        let (qb, kb, vb) = (
            &q[b * s.n * c + h * s.d..],
            &k[b * s.m * c + h * s.d..],
            &v[b * s.m * c + h * s.d..],
        );
        let mut scores = vec![0f32; block * s.m];
        for q0 in (0..s.n).step_by(block) {
            let rows = block.min(s.n - q0);
            let sc = &mut scores[..rows * s.m];
            // SAFETY: q rows q0.. of this head (stride c), k as its transpose (d x m), the
            // scores block (rows x m); then scores x v (m x d) into this head's columns of
            // output rows q0.., which no other task writes.
            unsafe {
                sgemm_serial(
                    rows,
                    s.m,
                    s.d,
                    sc.as_mut_ptr(),
                    s.m,
                    false,
                    View::rows(&qb[q0 * c..], c),
                    View::transposed(kb, c),
                    scale,
                );
            }
            let sums: Vec<f32> = sc.chunks_mut(s.m).map(exp_row).collect();
            unsafe {
                sgemm_serial(
                    rows,
                    s.d,
                    s.m,
                    dst.ptr().add(b * s.n * c + q0 * c + h * s.d),
                    c,
                    false,
                    View::rows(sc, s.m),
                    View::rows(vb, c),
                    1.0,
                );
            }
            // The softmax's normalisation, on the d outputs of each row rather than its m scores.
            for (i, sum) in sums.iter().enumerate() {
                // SAFETY: this head's columns of output row q0 + i, written just above.
                let row = unsafe {
                    std::slice::from_raw_parts_mut(
                        dst.ptr().add(b * s.n * c + (q0 + i) * c + h * s.d),
                        s.d,
                    )
                };
                row.iter_mut().for_each(|v| *v /= sum);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_and_heads_match_the_definition() {
        let s = Shape {
            batch: 2,
            n: 37,
            m: 23,
            heads: 3,
            d: 4,
        };
        let c = s.heads * s.d;
        let val = |n: usize, seed: u32| -> Vec<f32> {
            (0..n)
                .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 250.0 - 2.0)
                .collect()
        };
        let (q, k, v) = (val(2 * 37 * c, 1), val(2 * 23 * c, 2), val(2 * 23 * c, 3));
        let scale = 0.5f32;
        let want = crate::kernels::tests::reference_attention(&q, &k, &v, s, scale);
        for budget in [4 * 23 * 5, 1 << 20] {
            let mut got = vec![0f32; q.len()];
            attention(&q, &k, &v, s, scale, budget, &mut got);
            let err = crate::kernels::tests::worst_error(&got, &want);
            assert!(err < 1e-5, "budget {budget}: {err}");
        }
    }
}
