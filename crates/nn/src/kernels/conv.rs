//! 2-D convolution of f32 NCHW tensors as blocked im2col + one gemm per block.
//!
//! The weights are used in their stored layout, `[cout, cin·k·k]` row-major, which is already
//! the left matrix of the product, so nothing is re-laid out per call. The input side reads
//! its sources by index: channels concatenated from two tensors (the UNet's skip connections)
//! and nearest 2x upsampling cost no copies; a per-channel affine + SiLU (GroupNorm and the
//! activation before a convolution) is applied once into a reused scratch buffer. The output
//! starts as bias + per-channel term (the UNet's time embedding) + residual, and the product is
//! accumulated onto it. Scratch buffers live per thread and are reused, never zeroed.

use super::gemm::{sgemm, View};
use super::math::{dispatch, silu};
pub use super::operand::{Geometry, Init, Input, Pre};
use rayon::prelude::*;
use std::cell::RefCell;

/// Floats of im2col scratch per block of output rows.
const BLOCK_FLOATS: usize = 2 << 20;

thread_local! {
    static COLUMNS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static ACTIVATED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Convolve one batch item: `out` is `(cout, ho, wo)`. Stride-1 convolutions go to the
/// direct kernel where the CPU has AVX-512, the rest to im2col + gemm.
pub fn conv2d(
    input: &Input,
    weight: &[f32],
    cout: usize,
    g: Geometry,
    init: Init,
    out: &mut [f32],
) {
    let (_, wo) = g.out_dims(input.dims());
    let direct_1x1 =
        g.k == 1 && input.pre.is_none() && input.sources.len() == 1 && input.as_stored();
    if super::direct::applies(&g, wo) && !direct_1x1 && direct_enabled() {
        return super::direct::conv2d(input, weight, cout, g, init, out);
    }
    im2col_gemm(input, weight, cout, g, init, out)
}

/// `TESSERA_NO_DIRECT` sends every convolution through im2col + gemm (read once, not per call).
fn direct_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("TESSERA_NO_DIRECT").is_none())
}

/// Convolution as blocked im2col + gemm (any stride, any CPU).
pub fn im2col_gemm(
    input: &Input,
    weight: &[f32],
    cout: usize,
    g: Geometry,
    init: Init,
    out: &mut [f32],
) {
    let cin = input.channels();
    let (ho, wo) = g.out_dims(input.dims());
    let plane = ho * wo;
    debug_assert_eq!(weight.len(), cout * cin * g.k * g.k);
    debug_assert_eq!(out.len(), cout * plane);
    fill_init(out, plane, init);
    ACTIVATED.with(|act| {
        let mut act = act.borrow_mut();
        // The sources as the kernel reads them: through the pre-op when there is one.
        let owned;
        let sources: Vec<(&[f32], usize)> = match input.pre {
            None => input.sources.clone(),
            Some(pre) => {
                activate(input, pre, &mut act);
                owned = &act[..cin * input.h * input.w];
                vec![(owned, cin)]
            }
        };
        let direct = g.k == 1 && g.stride == 1 && g.pad == (0, 0, 0, 0) && input.as_stored();
        if direct && sources.len() == 1 {
            // A 1x1 convolution is a product with the input itself.
            // SAFETY: weight is cout x cin, the source cin x plane, out cout x plane.
            unsafe {
                sgemm(
                    cout,
                    plane,
                    cin,
                    out.as_mut_ptr(),
                    plane,
                    true,
                    View::rows(weight, cin),
                    View::rows(sources[0].0, plane),
                    1.0,
                )
            };
            return;
        }
        let kk = cin * g.k * g.k;
        let rows = (BLOCK_FLOATS / (kk * wo).max(1)).clamp(1, ho);
        COLUMNS.with(|cols| {
            let mut cols = cols.borrow_mut();
            if cols.len() < kk * rows * wo {
                cols.resize(kk * rows * wo, 0.0);
            }
            for y0 in (0..ho).step_by(rows) {
                let r = rows.min(ho - y0);
                let n = r * wo;
                let block = &mut cols[..kk * n];
                im2col(&sources, input, g, y0, r, wo, block);
                // SAFETY: weight is cout x kk, the block kk x n, and the destination rows
                // y0..y0+r of every output channel (row stride `plane`).
                unsafe {
                    sgemm(
                        cout,
                        n,
                        kk,
                        out.as_mut_ptr().add(y0 * wo),
                        plane,
                        true,
                        View::rows(weight, kk),
                        View::rows(block, n),
                        1.0,
                    )
                };
            }
        });
    });
}

fn fill_init(out: &mut [f32], plane: usize, init: Init) {
    out.par_chunks_mut(plane.max(1))
        .enumerate()
        .for_each(|(c, o)| {
            let v = init.bias.map_or(0.0, |b| b[c]) + init.per_channel.map_or(0.0, |p| p[c]);
            match init.residual {
                Some(res) => {
                    let res = &res[c * plane..(c + 1) * plane];
                    o.iter_mut().zip(res).for_each(|(o, &r)| *o = r + v);
                }
                None => o.fill(v),
            }
        });
}

/// The input's channels through the pre-op, one plane per channel, into `act`.
fn activate(input: &Input, pre: Pre, act: &mut Vec<f32>) {
    let hw = input.h * input.w;
    let cin = input.channels();
    if act.len() < cin * hw {
        act.resize(cin * hw, 0.0);
    }
    let mut planes: Vec<&[f32]> = Vec::with_capacity(cin);
    for (src, c) in &input.sources {
        planes.extend(src.chunks(hw).take(*c));
    }
    act[..cin * hw]
        .par_chunks_mut(hw)
        .zip(planes)
        .enumerate()
        .for_each(|(c, (dst, src))| {
            let (sc, sh) = (pre.scale[c], pre.shift[c]);
            dispatch!(if pre.silu {
                for (d, &s) in dst.iter_mut().zip(src) {
                    *d = silu(s * sc + sh);
                }
            } else {
                for (d, &s) in dst.iter_mut().zip(src) {
                    *d = s * sc + sh;
                }
            })
        });
}

/// Fill `block` (`cin·k·k` rows of `r·wo` values) with the patches of output rows
/// `y0..y0+r`; rows of the block are `(channel, ky, kx)` as the weights' columns are.
fn im2col(
    sources: &[(&[f32], usize)],
    input: &Input,
    g: Geometry,
    y0: usize,
    r: usize,
    wo: usize,
    block: &mut [f32],
) {
    let (hs, ws) = (input.h, input.w);
    let (hl, wl) = input.dims();
    let up = usize::from(input.upsample);
    let mut planes: Vec<&[f32]> = Vec::new();
    for (src, c) in sources {
        planes.extend(src.chunks(hs * ws).take(*c));
    }
    let kk = g.k * g.k;
    let (pt, _, pl, _) = g.pad;
    block
        .par_chunks_mut(r * wo)
        .enumerate()
        .for_each(|(row, dst)| {
            let (c, ky, kx) = (row / kk, (row % kk) / g.k, row % g.k);
            let src = planes[c];
            for (i, out_row) in dst.chunks_mut(wo).enumerate() {
                let yl = ((y0 + i) * g.stride + ky) as isize - pt as isize;
                if yl < 0 || yl >= hl as isize {
                    out_row.fill(0.0);
                    continue;
                }
                let line = &src[input.source_row(yl as usize) * ws..][..ws];
                for (xo, o) in out_row.iter_mut().enumerate() {
                    let xl = (xo * g.stride + kx) as isize - pl as isize;
                    *o = if xl < 0 || xl >= wl as isize {
                        0.0
                    } else {
                        line[xl as usize >> up]
                    };
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct convolution, the definition.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        x: &[f32],
        cin: usize,
        h: usize,
        w: usize,
        weight: &[f32],
        bias: &[f32],
        cout: usize,
        g: Geometry,
    ) -> Vec<f32> {
        let (ho, wo) = g.out_dims((h, w));
        let (pt, _, pl, _) = g.pad;
        let mut out = vec![0f32; cout * ho * wo];
        for co in 0..cout {
            for yo in 0..ho {
                for xo in 0..wo {
                    let mut s = bias[co] as f64;
                    for ci in 0..cin {
                        for ky in 0..g.k {
                            for kx in 0..g.k {
                                let yi = (yo * g.stride + ky) as isize - pt as isize;
                                let xi = (xo * g.stride + kx) as isize - pl as isize;
                                if yi >= 0 && xi >= 0 && (yi as usize) < h && (xi as usize) < w {
                                    s += x[(ci * h + yi as usize) * w + xi as usize] as f64
                                        * weight[((co * cin + ci) * g.k + ky) * g.k + kx] as f64;
                                }
                            }
                        }
                    }
                    out[(co * ho + yo) * wo + xo] = s as f32;
                }
            }
        }
        out
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    /// The convolution of seeded values by `run` (filled with NaN first, so an output left
    /// unwritten shows) and by the definition.
    fn against_reference(
        (cin, cout, h, w): (usize, usize, usize, usize),
        g: Geometry,
        seed: u32,
        run: impl Fn(&Input, &[f32], Init, &mut [f32]),
    ) -> (Vec<f32>, Vec<f32>) {
        let x = values(cin * h * w, seed);
        let weight = values(cout * cin * g.k * g.k, seed + 1);
        let bias = values(cout, seed + 2);
        let want = reference(&x, cin, h, w, &weight, &bias, cout, g);
        let mut got = vec![f32::NAN; want.len()];
        let input = Input {
            sources: vec![(&x, cin)],
            h,
            w,
            upsample: false,
            crop: (0, 0),
            pre: None,
        };
        let init = Init {
            bias: Some(&bias),
            ..Default::default()
        };
        run(&input, &weight, init, &mut got);
        (got, want)
    }

    /// Largest absolute difference; infinite where `got` holds a NaN.
    fn max_error(got: &[f32], want: &[f32]) -> f32 {
        got.iter()
            .zip(want)
            .map(|(a, b)| {
                if a.is_nan() {
                    f32::INFINITY
                } else {
                    (a - b).abs()
                }
            })
            .fold(0f32, f32::max)
    }

    #[test]
    fn convolutions_match_the_definition() {
        let cases = [
            (3, 1, (1, 1, 1, 1)),
            (1, 1, (0, 0, 0, 0)),
            (3, 2, (0, 1, 0, 1)),
            (3, 2, (1, 1, 1, 1)),
        ];
        for (k, stride, pad) in cases {
            let dims = (5, 13, 9, 37);
            let g = Geometry { k, stride, pad };
            let (got, want) = against_reference(dims, g, 1, |input, weight, init, out| {
                conv2d(input, weight, dims.1, g, init, out)
            });
            let (gemm, _) = against_reference(dims, g, 1, |input, weight, init, out| {
                im2col_gemm(input, weight, dims.1, g, init, out)
            });
            let err_gemm = max_error(&gemm, &want);
            assert!(
                err_gemm < 1e-4,
                "im2col: k {k} stride {stride} pad {pad:?}: {err_gemm}"
            );
            let err = max_error(&got, &want);
            assert!(err < 1e-4, "k {k} stride {stride} pad {pad:?}: {err}");
        }
    }

    /// Wide rows (split into column chunks per task) and a single row with many channels
    /// (output-channel blocks split across tasks) still give every output exactly once.
    #[test]
    fn wide_and_narrow_images_split_into_tasks_match_the_definition() {
        for (cin, cout, h, w) in [(64, 13, 2, 1100), (600, 20, 1, 100)] {
            let g = Geometry {
                k: 3,
                stride: 1,
                pad: (1, 1, 1, 1),
            };
            let (got, want) =
                against_reference((cin, cout, h, w), g, 4, |input, weight, init, out| {
                    conv2d(input, weight, cout, g, init, out)
                });
            let err = max_error(&got, &want);
            // Sums of 9·cin products of values in [-1, 1]: f32 rounding grows with the count;
            // an output left unwritten counts as infinite.
            assert!(err < 1e-5 * (9 * cin) as f32, "{cin}x{h}x{w}: {err}");
        }
    }

    /// Both kernels (the direct one from 16 output columns), with the upsampled rows cropped
    /// as a band of the tiled VAE crops them.
    #[test]
    fn concatenation_upsampling_cropping_and_the_pre_op_read_by_index() {
        let (c1, c2, cout, h, w) = (3, 2, 4, 5, 9);
        let a = values(c1 * h * w, 4);
        let b = values(c2 * h * w, 5);
        let scale = values(c1 + c2, 6);
        let shift = values(c1 + c2, 7);
        let weight = values(cout * (c1 + c2) * 9, 8);
        let bias = vec![0f32; cout];
        let g = Geometry {
            k: 3,
            stride: 1,
            pad: (1, 1, 1, 1),
        };
        for crop in [(0, 0), (1, 0), (0, 1), (1, 1), (3, 2)] {
            // The same input built by hand: concatenated, activated, upsampled, cropped.
            let rows = crop.0..2 * h - crop.1;
            let mut x = Vec::new();
            for (c, plane) in a.chunks(h * w).chain(b.chunks(h * w)).enumerate() {
                for y in rows.clone() {
                    for xx in 0..2 * w {
                        x.push(silu(plane[(y / 2) * w + xx / 2] * scale[c] + shift[c]));
                    }
                }
            }
            let want = reference(&x, c1 + c2, rows.len(), 2 * w, &weight, &bias, cout, g);
            let input = Input {
                sources: vec![(&a, c1), (&b, c2)],
                h,
                w,
                upsample: true,
                crop,
                pre: Some(Pre {
                    scale: &scale,
                    shift: &shift,
                    silu: true,
                }),
            };
            for direct in [true, false] {
                let mut got = vec![f32::NAN; want.len()];
                match direct {
                    true => conv2d(&input, &weight, cout, g, Init::default(), &mut got),
                    false => im2col_gemm(&input, &weight, cout, g, Init::default(), &mut got),
                }
                let err = got
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(err < 1e-4, "crop {crop:?}, direct {direct}: {err}");
            }
        }
    }
}
