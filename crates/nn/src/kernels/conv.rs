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
pub use super::operand::{seen_dims, Geometry, Init, Input, Pre};
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
    if super::winograd::applies(&g, wo, input.channels(), cout) && direct_enabled() {
        return super::winograd::conv2d(input, weight, cout, g, init, out);
    }
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
    init.fill(out, plane);
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
#[path = "conv_tests.rs"]
mod tests;
