//! The tiled executor of a VAE program: decode and encode any size at the memory of one tile,
//! equal to the whole-image executor up to float rounding.
//!
//! The program runs layer-synchronously: each convolution segment sweeps over output tiles,
//! reading its input tile plus the halo its kernel needs from a whole-image [`Store`] (a
//! scratch file) and writing its output tile to the next store. Every GroupNorm therefore
//! normalises with the statistics of the *whole* image — pooled from per-tile sums as the
//! previous segment wrote its tiles — so tiles share one normalisation (no tone shift) and every
//! pixel sees its true neighbourhood (no seam, no blending needed). The mid-block attention is
//! computed exactly over all pixels: keys and values go to stores, and each query tile streams
//! over them with an online softmax.

use super::program::{AttentionBlock, Op, Sampling};
use super::store::Store;
use super::{Decoder, Encoder, LatentDist};
use crate::layers::{Conv2d, GroupNorm, GroupStats, OnlineSoftmax, ResnetBlock};
use candle_core::{Module, Result, Tensor};
use tessera_core::geometry;

/// Side of the square output tiles for a layer at `h` rows when the image has `image_h` rows.
struct Tiling {
    tile_px: usize,
    image_h: usize,
    groups: usize,
}

impl Tiling {
    fn side(&self, h: usize) -> usize {
        (self.tile_px * h / self.image_h).max(8)
    }
}

/// One convolution over the whole image, tile by tile: optional GroupNorm (with whole-image
/// statistics) + SiLU before, optional residual after. Returns the output and its statistics.
struct Segment<'a> {
    pre: Option<(&'a GroupNorm, &'a GroupStats)>,
    conv: &'a Conv2d,
    kind: Sampling,
    residual: Option<(&'a Store, Option<&'a Conv2d>)>,
}

/// Zero-pad `x` by (top, bottom, left, right).
fn pad(x: &Tensor, t: usize, b: usize, l: usize, r: usize) -> Result<Tensor> {
    x.pad_with_zeros(2, t, b)?.pad_with_zeros(3, l, r)
}

impl Segment<'_> {
    fn out_dims(&self, h: usize, w: usize) -> (usize, usize) {
        match self.kind {
            Sampling::Same | Sampling::Point => (h, w),
            Sampling::Up2 => (2 * h, 2 * w),
            Sampling::Down2 => ((h - 2) / 2 + 1, (w - 2) / 2 + 1),
        }
    }

    /// Input rows needed for output rows `r` (clipped) and the zero padding before/after.
    fn input_span(
        &self,
        r: std::ops::Range<usize>,
        n: usize,
    ) -> (std::ops::Range<usize>, usize, usize) {
        match self.kind {
            Sampling::Point => (r, 0, 0),
            Sampling::Same => {
                let (a, b) = (r.start as isize - 1, r.end + 1);
                (
                    a.max(0) as usize..b.min(n),
                    (a < 0) as usize,
                    (b > n) as usize,
                )
            }
            Sampling::Down2 => {
                let (a, b) = (2 * r.start, 2 * r.end + 1);
                (a..b.min(n), 0, b.saturating_sub(n))
            }
            Sampling::Up2 => {
                // Upsampled rows r.start-1 .. r.end+1 come from input rows /2.
                let (a, b) = (r.start as isize - 1, r.end + 1);
                let lo = (a.max(0) as usize) / 2;
                let hi = (b.min(2 * n)).div_ceil(2);
                (lo..hi, (a < 0) as usize, (b > 2 * n) as usize)
            }
        }
    }

    fn tile(
        &self,
        input: &Store,
        rows: std::ops::Range<usize>,
        cols: std::ops::Range<usize>,
    ) -> Result<Tensor> {
        let (ir, pt, pb) = self.input_span(rows.clone(), input.h);
        let (ic, pl, pr) = self.input_span(cols.clone(), input.w);
        let mut x = input.read(ir.clone(), ic.clone())?;
        if let Some((norm, stats)) = self.pre {
            x = candle_nn::ops::silu(&norm.forward_with(&x, stats)?)?;
        }
        let y = match self.kind {
            Sampling::Point => self.conv.forward_unpadded(&x)?,
            Sampling::Same => self.conv.forward_unpadded(&pad(&x, pt, pb, pl, pr)?)?,
            Sampling::Down2 => self.conv.forward_unpadded(&pad(&x, 0, pb, 0, pr)?)?,
            Sampling::Up2 => {
                let (_, _, h, w) = x.dims4()?;
                let up = x.upsample_nearest2d(2 * h, 2 * w)?;
                // Crop the upsampled rows to [rows.start-1, rows.end+1) within the image.
                let top = (rows.start.saturating_sub(1)) - 2 * ir.start;
                let left = (cols.start.saturating_sub(1)) - 2 * ic.start;
                let uh = rows.len() + 2 - pt - pb;
                let uw = cols.len() + 2 - pl - pr;
                let up = up.narrow(2, top, uh)?.narrow(3, left, uw)?;
                self.conv.forward_unpadded(&pad(&up, pt, pb, pl, pr)?)?
            }
        };
        match self.residual {
            None => Ok(y),
            Some((skip, shortcut)) => {
                let s = skip.read(rows, cols)?;
                let s = match shortcut {
                    Some(c) => c.forward_unpadded(&s)?,
                    None => s,
                };
                s + y
            }
        }
    }

    fn run(&self, input: &Store, t: &Tiling) -> Result<(Store, GroupStats)> {
        let (h, w) = self.out_dims(input.h, input.w);
        let c = self.conv.out_channels();
        let mut out = Store::new(c, h, w)?;
        let mut stats = GroupStats::new(t.groups);
        // Outputs that feed no GroupNorm (image, latent parameters) have no group statistics.
        let normed = c.is_multiple_of(t.groups);
        let side = t.side(h);
        for r in geometry::partition_grid(h, w, side) {
            tessera_core::interrupt::check_candle()?;
            let y = self.tile(input, r.y..r.y + r.h, r.x..r.x + r.w)?;
            if normed {
                stats.add(&y)?;
            }
            out.write(r.y, r.x, &y)?;
        }
        Ok((out, stats))
    }
}

fn resnet(r: &ResnetBlock, x: &Store, sx: &GroupStats, t: &Tiling) -> Result<(Store, GroupStats)> {
    let seg1 = Segment {
        pre: Some((&r.norm1, sx)),
        conv: &r.conv1,
        kind: Sampling::Same,
        residual: None,
    };
    let (h, sh) = seg1.run(x, t)?;
    let seg2 = Segment {
        pre: Some((&r.norm2, &sh)),
        conv: &r.conv2,
        kind: Sampling::Same,
        residual: Some((x, r.shortcut.as_ref())),
    };
    seg2.run(&h, t)
}

/// Exact softmax attention over all pixels, one query tile at a time, keys streamed in row
/// bands through the shared online softmax.
fn attention(
    a: &AttentionBlock,
    x: &Store,
    sx: &GroupStats,
    t: &Tiling,
) -> Result<(Store, GroupStats)> {
    let (c, h, w) = (x.c, x.h, x.w);
    let side = t.side(h);
    let tokens = |img: &Tensor| -> Result<Tensor> {
        let (_, c, h, w) = img.dims4()?;
        img.reshape((c, h * w))?.t()?.contiguous()
    };
    let (mut keys, mut values) = (Store::new(c, h, w)?, Store::new(c, h, w)?);
    let grid = geometry::partition_grid(h, w, side);
    for r in &grid {
        let n = a
            .norm
            .forward_with(&x.read(r.y..r.y + r.h, r.x..r.x + r.w)?, sx)?;
        let toks = tokens(&n)?;
        let as_img = |m: Tensor| m.t()?.reshape((1, c, r.h, r.w));
        keys.write(r.y, r.x, &as_img(a.k.forward(&toks)?)?)?;
        values.write(r.y, r.x, &as_img(a.v.forward(&toks)?)?)?;
    }
    let band = (side * side / w).clamp(1, h);
    let mut out = Store::new(c, h, w)?;
    let mut stats = GroupStats::new(t.groups);
    for r in &grid {
        tessera_core::interrupt::check_candle()?;
        let xt = x.read(r.y..r.y + r.h, r.x..r.x + r.w)?;
        let q = (a.q.forward(&tokens(&a.norm.forward_with(&xt, sx)?)?)? * a.scale()?)?;
        let mut softmax = OnlineSoftmax::new(q, c)?;
        for y0 in (0..h).step_by(band) {
            let y1 = (y0 + band).min(h);
            let k = tokens(&keys.read(y0..y1, 0..w)?)?;
            let v = tokens(&values.read(y0..y1, 0..w)?)?;
            softmax.add(&k, &v)?;
        }
        let y = a.out.forward(&softmax.finish()?)?;
        let y = (y.t()?.reshape((1, c, r.h, r.w))? + xt)?;
        stats.add(&y)?;
        out.write(r.y, r.x, &y)?;
    }
    Ok((out, stats))
}

/// Run a program tile by tile from `input`; returns the last store.
fn run(ops: &[Op], input: &Tensor, groups: usize, tile_px: usize) -> Result<Store> {
    let (_, _, h, _) = input.dims4()?;
    let upsamplings = ops
        .iter()
        .filter(|op| {
            matches!(
                op,
                Op::Conv {
                    sampling: Sampling::Up2,
                    ..
                }
            )
        })
        .count();
    let t = Tiling {
        tile_px,
        image_h: h << upsamplings,
        groups,
    };
    let mut x = Store::from_tensor(input)?;
    // Statistics of `x`, gathered as it was written (none for the input).
    let mut sx: Option<GroupStats> = None;
    for op in ops {
        let stats_of_input = || {
            sx.as_ref().ok_or_else(|| {
                candle_core::Error::Msg("a GroupNorm reads an output without statistics".into())
            })
        };
        let (y, sy) = match op {
            Op::Conv {
                pre,
                conv,
                sampling,
            } => {
                let pre = match pre {
                    Some(norm) => Some((norm, stats_of_input()?)),
                    None => None,
                };
                let seg = Segment {
                    pre,
                    conv,
                    kind: *sampling,
                    residual: None,
                };
                seg.run(&x, &t)?
            }
            Op::Resnet(r) => resnet(r, &x, stats_of_input()?, &t)?,
            Op::Attention(a) => attention(a, &x, stats_of_input()?, &t)?,
        };
        (x, sx) = (y, Some(sy));
    }
    Ok(x)
}

/// Decode `z` (1, L, h, w), already divided by the scaling factor, in tiles of about
/// `tile_px` image pixels. Equals [`Decoder::forward`] up to float rounding.
pub fn decode(dec: &Decoder, z: &Tensor, tile_px: usize) -> Result<Tensor> {
    run(&dec.ops, z, dec.groups, tile_px)?.read_all()
}

/// Encode `image` (1, 3, H, W) in [-1, 1] in tiles of about `tile_px` pixels. Equals
/// [`Encoder::forward`] up to float rounding.
pub fn encode(enc: &Encoder, image: &Tensor, tile_px: usize) -> Result<LatentDist> {
    LatentDist::from_parameters(&run(&enc.ops, image, enc.groups, tile_px)?.read_all()?)
}
