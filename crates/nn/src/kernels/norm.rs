//! Normalisation statistics with f64 sums (f32 values, exact enough whatever the image size),
//! turned into a per-channel affine map `y = x * scale + shift` that the convolution applies
//! on its input side.

use super::math::sum_and_squares;
use rayon::prelude::*;

/// Per-channel `(sum, sum of squares)` of `c` planes of `hw` values each.
pub fn channel_sums(x: &[f32], hw: usize) -> Vec<(f64, f64)> {
    x.par_chunks(hw.max(1))
        .map(|plane| {
            // f32 partial sums over short runs, f64 across them: fast and still exact enough.
            plane.chunks(1024).fold((0f64, 0f64), |(s, q), run| {
                let (rs, rq) = sum_and_squares(run);
                (s + rs as f64, q + rq as f64)
            })
        })
        .collect()
}

/// GroupNorm with statistics pooled from per-channel sums (over `count` values per channel)
/// as a per-channel `(scale, shift)`.
pub fn group_affine(
    sums: &[(f64, f64)],
    count: usize,
    groups: usize,
    gamma: &[f32],
    beta: &[f32],
    eps: f64,
) -> (Vec<f32>, Vec<f32>) {
    let c = sums.len();
    let per = c / groups;
    let n = (per * count) as f64;
    let mut scale = vec![0f32; c];
    let mut shift = vec![0f32; c];
    for g in 0..groups {
        let (s, q) = sums[g * per..(g + 1) * per]
            .iter()
            .fold((0f64, 0f64), |(s, q), &(a, b)| (s + a, q + b));
        let mean = s / n;
        let var = (q / n - mean * mean).max(0.0);
        let inv = 1.0 / (var + eps).sqrt();
        for ch in g * per..(g + 1) * per {
            let sc = gamma[ch] as f64 * inv;
            scale[ch] = sc as f32;
            shift[ch] = (beta[ch] as f64 - mean * sc) as f32;
        }
    }
    (scale, shift)
}

/// LayerNorm of each `c`-wide row of `x` into `out`.
pub fn layer_norm(x: &[f32], c: usize, gamma: &[f32], beta: &[f32], eps: f64, out: &mut [f32]) {
    out.par_chunks_mut(c)
        .zip(x.par_chunks(c))
        .for_each(|(o, row)| {
            let n = c as f64;
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / n;
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
            let inv = (1.0 / (var + eps).sqrt()) as f32;
            let mean = mean as f32;
            for (((o, &v), &g), &b) in o.iter_mut().zip(row).zip(gamma).zip(beta) {
                *o = (v - mean) * inv * g + b;
            }
        });
}
