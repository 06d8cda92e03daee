//! The tiled VAE: decode and encode any size at the memory of one tile, equal to the untiled
//! result up to float rounding.
//!
//! The network runs layer-synchronously: each convolution segment sweeps over output tiles,
//! reading its input tile plus the halo its kernel needs from a whole-image [`Store`] (a
//! scratch file) and writing its output tile to the next store. Every GroupNorm therefore
//! normalises with the statistics of the *whole* image — pooled from per-tile sums as the
//! previous segment wrote its tiles — so tiles share one normalisation (no tone shift) and every
//! pixel sees its true neighbourhood (no seam, no blending needed). The mid-block attention is
//! computed exactly over all pixels: keys and values go to stores, and each query tile streams
//! over them with an online softmax.

use super::blocks::{Attention, ResnetBlock};
use super::norm::{GroupNorm, GroupStats};
use super::store::Store;
use super::{Decoder, Encoder, LatentDist, MidBlock};
use crate::tiles;
use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::Conv2d;

/// How a segment's convolution maps input pixels to output pixels.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// 3x3, stride 1, zero padding 1.
    Same3,
    /// 1x1.
    Point,
    /// Nearest 2x upsampling, then Same3.
    Up2,
    /// Pad right/bottom by 1, then 3x3 stride 2 (the VAE encoder's downsampler).
    Down2,
}

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
    kind: Kind,
    residual: Option<(&'a Store, Option<&'a Conv2d>)>,
}

fn conv_valid(conv: &Conv2d, x: &Tensor, stride: usize) -> Result<Tensor> {
    let y = x.conv2d(conv.weight(), 0, stride, 1, 1)?;
    match conv.bias() {
        Some(b) => y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?),
        None => Ok(y),
    }
}

/// Zero-pad `x` by (top, bottom, left, right).
fn pad(x: &Tensor, t: usize, b: usize, l: usize, r: usize) -> Result<Tensor> {
    x.pad_with_zeros(2, t, b)?.pad_with_zeros(3, l, r)
}

impl Segment<'_> {
    fn out_dims(&self, h: usize, w: usize) -> (usize, usize) {
        match self.kind {
            Kind::Same3 | Kind::Point => (h, w),
            Kind::Up2 => (2 * h, 2 * w),
            Kind::Down2 => ((h - 2) / 2 + 1, (w - 2) / 2 + 1),
        }
    }

    /// Input rows needed for output rows `r` (clipped) and the zero padding before/after.
    fn input_span(
        &self,
        r: std::ops::Range<usize>,
        n: usize,
    ) -> (std::ops::Range<usize>, usize, usize) {
        match self.kind {
            Kind::Point => (r, 0, 0),
            Kind::Same3 => {
                let (a, b) = (r.start as isize - 1, r.end + 1);
                (
                    a.max(0) as usize..b.min(n),
                    (a < 0) as usize,
                    (b > n) as usize,
                )
            }
            Kind::Down2 => {
                let (a, b) = (2 * r.start, 2 * r.end + 1);
                (a..b.min(n), 0, b.saturating_sub(n))
            }
            Kind::Up2 => {
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
            Kind::Point => conv_valid(self.conv, &x, 1)?,
            Kind::Same3 => conv_valid(self.conv, &pad(&x, pt, pb, pl, pr)?, 1)?,
            Kind::Down2 => conv_valid(self.conv, &pad(&x, 0, pb, 0, pr)?, 2)?,
            Kind::Up2 => {
                let (_, _, h, w) = x.dims4()?;
                let up = x.upsample_nearest2d(2 * h, 2 * w)?;
                // Crop the upsampled rows to [rows.start-1, rows.end+1) within the image.
                let top = (rows.start.saturating_sub(1)) - 2 * ir.start;
                let left = (cols.start.saturating_sub(1)) - 2 * ic.start;
                let uh = rows.len() + 2 - pt - pb;
                let uw = cols.len() + 2 - pl - pr;
                let up = up.narrow(2, top, uh)?.narrow(3, left, uw)?;
                conv_valid(self.conv, &pad(&up, pt, pb, pl, pr)?, 1)?
            }
        };
        match self.residual {
            None => Ok(y),
            Some((skip, shortcut)) => {
                let s = skip.read(rows, cols)?;
                let s = match shortcut {
                    Some(c) => conv_valid(c, &s, 1)?,
                    None => s,
                };
                s + y
            }
        }
    }

    fn run(&self, input: &Store, t: &Tiling) -> Result<(Store, GroupStats)> {
        let (h, w) = self.out_dims(input.h, input.w);
        let c = self.conv.weight().dim(0)?;
        let mut out = Store::new(c, h, w)?;
        let mut stats = GroupStats::new(t.groups);
        // Outputs that feed no GroupNorm (image, latent parameters) have no group statistics.
        let normed = c % t.groups == 0;
        let side = t.side(h);
        for r in tiles::partition_grid(h, w, side) {
            crate::progress::check_interrupt_candle()?;
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
        kind: Kind::Same3,
        residual: None,
    };
    let (h, sh) = seg1.run(x, t)?;
    let seg2 = Segment {
        pre: Some((&r.norm2, &sh)),
        conv: &r.conv2,
        kind: Kind::Same3,
        residual: Some((x, r.shortcut.as_ref())),
    };
    seg2.run(&h, t)
}

/// Exact softmax attention over all pixels, one query tile at a time, keys streamed in row
/// bands with an online (running max / running sum) softmax.
fn attention(a: &Attention, x: &Store, sx: &GroupStats, t: &Tiling) -> Result<(Store, GroupStats)> {
    let (c, h, w) = (x.c, x.h, x.w);
    let side = t.side(h);
    let tokens = |img: &Tensor| -> Result<Tensor> {
        let (_, c, h, w) = img.dims4()?;
        img.reshape((c, h * w))?.t()?.contiguous()
    };
    let (mut keys, mut values) = (Store::new(c, h, w)?, Store::new(c, h, w)?);
    let grid = tiles::partition_grid(h, w, side);
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
        crate::progress::check_interrupt_candle()?;
        let xt = x.read(r.y..r.y + r.h, r.x..r.x + r.w)?;
        let q = (a.q.forward(&tokens(&a.norm.forward_with(&xt, sx)?)?)? * (c as f64).powf(-0.5))?;
        let n = q.dim(0)?;
        let mut m = Tensor::full(f32::NEG_INFINITY, (n, 1), q.device())?;
        let mut l = Tensor::zeros((n, 1), DType::F32, q.device())?;
        let mut acc = Tensor::zeros((n, c), DType::F32, q.device())?;
        for y0 in (0..h).step_by(band) {
            let y1 = (y0 + band).min(h);
            let k = tokens(&keys.read(y0..y1, 0..w)?)?;
            let v = tokens(&values.read(y0..y1, 0..w)?)?;
            let s = q.matmul(&k.t()?)?;
            let m_new = m.maximum(&s.max_keepdim(D::Minus1)?)?;
            let p = s.broadcast_sub(&m_new)?.exp()?;
            let correction = (&m - &m_new)?.exp()?;
            l = (l.mul(&correction)? + p.sum_keepdim(D::Minus1)?)?;
            acc = (acc.broadcast_mul(&correction)? + p.matmul(&v)?)?;
            m = m_new;
        }
        let y = a.out.forward(&acc.broadcast_div(&l)?)?;
        let y = (y.t()?.reshape((1, c, r.h, r.w))? + xt)?;
        stats.add(&y)?;
        out.write(r.y, r.x, &y)?;
    }
    Ok((out, stats))
}

fn mid(m: &MidBlock, x: &Store, sx: &GroupStats, t: &Tiling) -> Result<(Store, GroupStats)> {
    let (x, sx) = resnet(&m.res0, x, sx, t)?;
    let (x, sx) = match &m.attn {
        Some(a) => attention(a, &x, &sx, t)?,
        None => (x, sx),
    };
    resnet(&m.res1, &x, &sx, t)
}

/// Decode `z` (1, L, h, w), already divided by the scaling factor, in tiles of about
/// `tile_px` image pixels. Equals [`Decoder::forward`] up to float rounding.
pub fn decode(dec: &Decoder, z: &Tensor, tile_px: usize) -> Result<Tensor> {
    let (_, _, lh, _) = z.dims4()?;
    let factor = 1 << (dec.blocks.len() - 1);
    let t = Tiling {
        tile_px,
        image_h: lh * factor,
        groups: dec.norm_out.groups(),
    };
    let z = match &dec.post_quant_conv {
        Some(p) => p.forward(z)?,
        None => z.clone(),
    };
    let z = Store::from_tensor(&z)?;
    let seg = Segment {
        pre: None,
        conv: &dec.conv_in,
        kind: Kind::Same3,
        residual: None,
    };
    let (x, sx) = seg.run(&z, &t)?;
    let (mut x, mut sx) = mid(&dec.mid, &x, &sx, &t)?;
    for (resnets, up) in &dec.blocks {
        for r in resnets {
            (x, sx) = resnet(r, &x, &sx, &t)?;
        }
        if let Some(u) = up {
            (x, sx) = Segment {
                pre: None,
                conv: &u.conv,
                kind: Kind::Up2,
                residual: None,
            }
            .run(&x, &t)?;
        }
    }
    let seg = Segment {
        pre: Some((&dec.norm_out, &sx)),
        conv: &dec.conv_out,
        kind: Kind::Same3,
        residual: None,
    };
    seg.run(&x, &t)?.0.read_all()
}

/// Encode `image` (1, 3, H, W) in [-1, 1] in tiles of about `tile_px` pixels. Equals
/// [`Encoder::forward`] up to float rounding.
pub fn encode(enc: &Encoder, image: &Tensor, tile_px: usize) -> Result<LatentDist> {
    let (_, _, h, _) = image.dims4()?;
    let t = Tiling {
        tile_px,
        image_h: h,
        groups: enc.norm_out.groups(),
    };
    let input = Store::from_tensor(image)?;
    let (mut x, mut sx) = Segment {
        pre: None,
        conv: &enc.conv_in,
        kind: Kind::Same3,
        residual: None,
    }
    .run(&input, &t)?;
    drop(input);
    for (resnets, down) in &enc.blocks {
        for r in resnets {
            (x, sx) = resnet(r, &x, &sx, &t)?;
        }
        if let Some(d) = down {
            (x, sx) = Segment {
                pre: None,
                conv: &d.conv,
                kind: Kind::Down2,
                residual: None,
            }
            .run(&x, &t)?;
        }
    }
    let (x, sx) = mid(&enc.mid, &x, &sx, &t)?;
    let seg = Segment {
        pre: Some((&enc.norm_out, &sx)),
        conv: &enc.conv_out,
        kind: Kind::Same3,
        residual: None,
    };
    let (x, _) = seg.run(&x, &t)?;
    let params = match &enc.quant_conv {
        Some(q) => {
            Segment {
                pre: None,
                conv: q,
                kind: Kind::Point,
                residual: None,
            }
            .run(&x, &t)?
            .0
        }
        None => x,
    };
    LatentDist::from_parameters(&params.read_all()?)
}
