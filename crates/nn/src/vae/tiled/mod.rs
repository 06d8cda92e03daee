//! The tiled executor of a VAE program: decode and encode any size at the memory of one band
//! of rows, equal to the whole-image executor up to float rounding.
//!
//! The program runs layer-synchronously: each convolution sweeps over bands of whole rows,
//! reading its input band plus the halo rows its kernel needs from a whole-image [`Store`]
//! (RAM while the scratch budget allows, else a file) and writing its output band to the next
//! store. Every GroupNorm therefore normalises with the statistics of the *whole* image —
//! pooled from per-band sums as the previous layer wrote its bands — so bands share one
//! normalisation (no tone shift) and every pixel sees its true neighbourhood (no seam, no
//! blending). The mid-block attention is exact over all pixels: its keys and values are
//! gathered once, band by band, and every band of queries attends to all of them.

mod attention;

use super::program::{Op, Sampling};
use super::store::{Scratch, Store};
use super::{Decoder, Encoder, LatentDist};
use crate::layers::{Affine, Conv2d, Fused, GroupStats, ResnetBlock};
use attention::attention;
use candle_core::{Result, Tensor};
use std::ops::Range;
use tessera_core::recycle::recycling;

/// Band heights: a band covers the share of its layer that a `tile_px` square covers of the
/// full-resolution image.
struct Tiling {
    tile_px: usize,
    image: (usize, usize),
}

impl Tiling {
    fn rows(&self, h: usize, w: usize) -> usize {
        let (ih, iw) = self.image;
        let area = self.tile_px * self.tile_px * h * w / (ih * iw).max(1);
        (area / w.max(1)).clamp(1, h)
    }
}

/// One convolution over the whole image, band by band: optional GroupNorm (with whole-image
/// statistics) + SiLU before, optional residual after.
struct Segment<'a> {
    pre: Option<Affine>,
    conv: &'a Conv2d,
    kind: Sampling,
    residual: Option<(&'a Store, Option<&'a Conv2d>)>,
}

impl Segment<'_> {
    fn out_dims(&self, h: usize, w: usize) -> (usize, usize) {
        match self.kind {
            Sampling::Same | Sampling::Point => (h, w),
            Sampling::Up2 => (2 * h, 2 * w),
            Sampling::Down2 => ((h - 2) / 2 + 1, (w - 2) / 2 + 1),
        }
    }

    /// Input rows needed for output rows `r` (clipped to `0..n`) and the zero rows to pad
    /// before and after.
    fn input_rows(&self, r: Range<usize>, n: usize) -> (Range<usize>, usize, usize) {
        match self.kind {
            Sampling::Point => (r, 0, 0),
            Sampling::Same => {
                let (a, b) = (r.start as isize - 1, r.end + 1);
                let range = a.max(0) as usize..b.min(n);
                (range, (a < 0) as usize, (b > n) as usize)
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

    fn band(&self, input: &Store, rows: Range<usize>) -> Result<Tensor> {
        let (ir, pt, pb) = self.input_rows(rows.clone(), input.h);
        let x = input.read_rows(ir.clone())?;
        let shortcut;
        let residual = match self.residual {
            None => None,
            Some((skip, conv)) => {
                let s = skip.read_rows(rows.clone())?;
                shortcut = match conv {
                    Some(c) => c.forward_unpadded(&s)?,
                    None => s,
                };
                Some(&shortcut)
            }
        };
        let fused = |padding| Fused {
            pre: self.pre.as_ref(),
            residual,
            padding: Some(padding),
            ..Default::default()
        };
        match self.kind {
            Sampling::Point => self.conv.forward_fused(&x, fused((0, 0, 0, 0))),
            Sampling::Same => self.conv.forward_fused(&x, fused((pt, pb, 1, 1))),
            Sampling::Down2 => self.conv.forward_fused(&x, fused((0, pb, 0, 1))),
            Sampling::Up2 => {
                // The upsampled rows [rows.start-1, rows.end+1) within the image, read from
                // the band's input rows by index (no upsampled copy).
                let top = rows.start.saturating_sub(1) - 2 * ir.start;
                let uh = rows.len() + 2 - pt - pb;
                let bottom = 2 * ir.len() - top - uh;
                let fused = Fused {
                    upsample: true,
                    crop_rows: (top, bottom),
                    ..fused((pt, pb, 1, 1))
                };
                self.conv.forward_fused(&x, fused)
            }
        }
    }

    /// Run into a new store; `conv_input`: one read only by the next convolution
    /// ([`Store::conv_input`]).
    fn run(
        &self,
        input: &Store,
        t: &Tiling,
        scratch: &Scratch,
        conv_input: bool,
    ) -> Result<(Store, GroupStats)> {
        let (h, w) = self.out_dims(input.h, input.w);
        let c = self.conv.out_channels();
        let mut out = match conv_input {
            true => Store::conv_input(c, h, w, scratch)?,
            false => Store::new(c, h, w, scratch)?,
        };
        let mut stats = GroupStats::new(c);
        self.each_band(input, t, &mut |r0, y| {
            stats.add(&y)?;
            out.write_rows(r0, &y)
        })?;
        Ok((out, stats))
    }

    /// Compute the output band by band, top to bottom: `f(first_row, band)`.
    fn each_band(&self, input: &Store, t: &Tiling, f: &mut BandSink) -> Result<()> {
        let (h, w) = self.out_dims(input.h, input.w);
        let rows = t.rows(h, w);
        // Every band allocates alike: its buffers are recycled (no store is freed meanwhile).
        recycling(|| {
            for r0 in (0..h).step_by(rows) {
                tessera_core::interrupt::check_candle()?;
                f(r0, self.band(input, r0..(r0 + rows).min(h))?)?;
            }
            Ok(())
        })
    }
}

fn resnet(
    r: &ResnetBlock,
    x: &Store,
    sx: &GroupStats,
    t: &Tiling,
    scratch: &Scratch,
) -> Result<(Store, GroupStats)> {
    let seg1 = Segment {
        pre: Some(r.norm1.affine_with(sx, true)),
        conv: &r.conv1,
        kind: Sampling::Same,
        residual: None,
    };
    let (h, sh) = seg1.run(x, t, scratch, true)?;
    let seg2 = Segment {
        pre: Some(r.norm2.affine_with(&sh, true)),
        conv: &r.conv2,
        kind: Sampling::Same,
        residual: Some((x, r.shortcut.as_ref())),
    };
    seg2.run(&h, t, scratch, false)
}

/// Where a band of a pass's output goes: `f(first_row, (1, C, rows, W))`, top to bottom.
pub type BandSink<'a> = dyn FnMut(usize, Tensor) -> Result<()> + 'a;

/// A pass's input: a whole tensor, or `(channels, height, width)` and a function giving any
/// range of its rows as (1, C, rows, W), so the input is never held whole.
pub enum Input<'a> {
    Whole(&'a Tensor),
    Rows {
        dims: (usize, usize, usize),
        rows: &'a dyn Fn(Range<usize>) -> Result<Tensor>,
    },
}

/// Run a program band by band from `input`; the last layer's output goes to `sink` band by
/// band when the last layer is a convolution (else it is stored and read back in bands).
fn run(
    ops: &[Op],
    input: Input,
    tile_px: usize,
    scratch: Option<u64>,
    sink: &mut BandSink,
) -> Result<()> {
    let (h, w) = match &input {
        Input::Whole(t) => (t.dim(2)?, t.dim(3)?),
        Input::Rows { dims, .. } => (dims.1, dims.2),
    };
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
        image: (h << upsamplings, w << upsamplings),
    };
    // A pass whose layers multiply in bf16 (the bf16 path; the encoder's stride-2 convolutions
    // widen their bf16 weights) keeps its activations in bf16 between layers; f32 stays exact.
    let bf16 = ops.iter().any(Op::bf16_products);
    let (mut x, scratch) = match input {
        Input::Whole(t) => {
            let scratch = Scratch::new(scratch, t, bf16);
            (Store::from_tensor(t, &scratch)?, scratch)
        }
        Input::Rows {
            dims: (c, h, w),
            rows,
        } => {
            let band = t.rows(h, w);
            let first = rows(0..band.min(h))?;
            let scratch = Scratch::new(scratch, &first, bf16);
            let mut store = Store::new(c, h, w, &scratch)?;
            store.write_rows(0, &first)?;
            for r0 in (band..h).step_by(band) {
                store.write_rows(r0, &rows(r0..(r0 + band).min(h))?)?;
            }
            (store, scratch)
        }
    };
    // Statistics of `x`, gathered as it was written (none for the input).
    let mut sx: Option<GroupStats> = None;
    let Some((last, ops)) = ops.split_last() else {
        return each_stored_band(&x, &t, sink);
    };
    for (i, op) in ops.iter().enumerate() {
        scratch.between_layers(|| format!("tiled VAE layer {i}"));
        let (y, sy) = match op {
            Op::Conv { .. } => conv_segment(op, &sx)?.run(&x, &t, &scratch, false)?,
            Op::Resnet(r) => resnet(r, &x, stats_of(&sx)?, &t, &scratch)?,
            Op::Attention(a) => attention(a, &x, stats_of(&sx)?, &t, &scratch)?,
        };
        (x, sx) = (y, Some(sy));
    }
    match last {
        Op::Conv { .. } => conv_segment(last, &sx)?.each_band(&x, &t, sink),
        Op::Resnet(r) => {
            each_stored_band(&resnet(r, &x, stats_of(&sx)?, &t, &scratch)?.0, &t, sink)
        }
        Op::Attention(a) => {
            each_stored_band(&attention(a, &x, stats_of(&sx)?, &t, &scratch)?.0, &t, sink)
        }
    }
}

/// A convolution op as a segment, its GroupNorm (if any) with the statistics of its input.
fn conv_segment<'a>(op: &'a Op, sx: &Option<GroupStats>) -> Result<Segment<'a>> {
    let Op::Conv {
        pre,
        conv,
        sampling,
    } = op
    else {
        return Err(candle_core::Error::Msg("not a convolution".into()));
    };
    Ok(Segment {
        pre: pre
            .as_ref()
            .map(|norm| Ok::<_, candle_core::Error>(norm.affine_with(stats_of(sx)?, true)))
            .transpose()?,
        conv,
        kind: *sampling,
        residual: None,
    })
}

fn stats_of(sx: &Option<GroupStats>) -> Result<&GroupStats> {
    sx.as_ref().ok_or_else(|| {
        candle_core::Error::Msg("a GroupNorm reads an output without statistics".into())
    })
}

fn each_stored_band(store: &Store, t: &Tiling, sink: &mut BandSink) -> Result<()> {
    let rows = t.rows(store.h, store.w);
    recycling(|| {
        for r0 in (0..store.h).step_by(rows) {
            sink(r0, store.read_rows(r0..(r0 + rows).min(store.h))?)?;
        }
        Ok(())
    })
}

/// Collect a pass's bands into one tensor.
fn whole(f: impl FnOnce(&mut BandSink) -> Result<()>) -> Result<Tensor> {
    let mut bands = Vec::new();
    f(&mut |_, band| {
        bands.push(band);
        Ok(())
    })?;
    Tensor::cat(&bands, 2)
}

/// Decode `z` (1, L, h, w), already divided by the scaling factor, in bands covering about
/// `tile_px`² image pixels, with at most `scratch` bytes of whole-image activations in RAM
/// (`None`: all). Equals [`Decoder::forward`] up to float rounding.
pub fn decode(dec: &Decoder, z: &Tensor, tile_px: usize, scratch: Option<u64>) -> Result<Tensor> {
    whole(|sink| decode_bands(dec, z, tile_px, scratch, sink))
}

/// [`decode`], handing the image to `sink` band by band, top to bottom, so that the whole
/// picture is never held.
pub fn decode_bands(
    dec: &Decoder,
    z: &Tensor,
    tile_px: usize,
    scratch: Option<u64>,
    sink: &mut BandSink,
) -> Result<()> {
    run(&dec.ops, Input::Whole(z), tile_px, scratch, sink)
}

/// Encode `image` (1, 3, H, W) in [-1, 1] in bands, as [`decode`]. Equals [`Encoder::forward`]
/// up to float rounding.
pub fn encode(
    enc: &Encoder,
    image: &Tensor,
    tile_px: usize,
    scratch: Option<u64>,
) -> Result<LatentDist> {
    encode_input(enc, Input::Whole(image), tile_px, scratch)
}

/// [`encode`] of an image given as rows (see [`Input`]).
pub fn encode_input(
    enc: &Encoder,
    image: Input,
    tile_px: usize,
    scratch: Option<u64>,
) -> Result<LatentDist> {
    LatentDist::from_parameters(&whole(|sink| run(&enc.ops, image, tile_px, scratch, sink))?)
}
