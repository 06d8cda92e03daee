//! What a convolution kernel reads and starts its output from, shared by the im2col
//! (`conv`) and direct (`direct`) kernels.

/// A per-channel affine map, optionally followed by SiLU, applied to the input.
#[derive(Clone, Copy)]
pub struct Pre<'a> {
    pub scale: &'a [f32],
    pub shift: &'a [f32],
    pub silu: bool,
}

/// What a convolution reads, for one batch item.
pub struct Input<'a> {
    /// `(values (c, h, w), c)`: sources concatenated along channels.
    pub sources: Vec<(&'a [f32], usize)>,
    pub h: usize,
    pub w: usize,
    /// Nearest-neighbour 2x upsampling before the convolution.
    pub upsample: bool,
    /// Rows of the (upsampled) input left out at the top and bottom: a band of the tiled VAE
    /// may start or end between the two copies of an upsampled row.
    pub crop: (usize, usize),
    pub pre: Option<Pre<'a>>,
}

impl Input<'_> {
    pub fn channels(&self) -> usize {
        self.sources.iter().map(|s| s.1).sum()
    }

    /// The size the kernel sees (after upsampling).
    pub fn dims(&self) -> (usize, usize) {
        seen_dims((self.h, self.w), self.upsample, self.crop)
    }

    /// Whether the kernel reads the sources as they are (no upsampling, no crop).
    pub fn as_stored(&self) -> bool {
        !self.upsample && self.crop == (0, 0)
    }

    /// The source row of row `y` of what the kernel sees.
    pub fn source_row(&self, y: usize) -> usize {
        (y + self.crop.0) >> usize::from(self.upsample)
    }
}

/// The size a kernel sees of an `(h, w)` source: upsampled 2x or not, then `crop` rows left
/// out at the top and bottom.
pub fn seen_dims((h, w): (usize, usize), upsample: bool, crop: (usize, usize)) -> (usize, usize) {
    let up = usize::from(upsample);
    ((h << up) - crop.0 - crop.1, w << up)
}

/// Kernel size, stride and zero padding (top, bottom, left, right).
#[derive(Clone, Copy, Debug)]
pub struct Geometry {
    pub k: usize,
    pub stride: usize,
    pub pad: (usize, usize, usize, usize),
}

impl Geometry {
    pub fn out_dims(&self, (h, w): (usize, usize)) -> (usize, usize) {
        let (t, b, l, r) = self.pad;
        (
            (h + t + b - self.k) / self.stride + 1,
            (w + l + r - self.k) / self.stride + 1,
        )
    }
}

/// What the output holds before the product is added: `bias[c] + per_channel[c] + residual`.
#[derive(Default, Clone, Copy)]
pub struct Init<'a> {
    pub bias: Option<&'a [f32]>,
    pub per_channel: Option<&'a [f32]>,
    /// `(cout, ho, wo)` values to add.
    pub residual: Option<&'a [f32]>,
}

impl Init<'_> {
    /// `out` (`cout` planes of `plane` values) set to what it holds before the product.
    pub fn fill(&self, out: &mut [f32], plane: usize) {
        use rayon::prelude::*;
        out.par_chunks_mut(plane.max(1))
            .enumerate()
            .for_each(|(c, o)| {
                let v = self.bias.map_or(0.0, |b| b[c]) + self.per_channel.map_or(0.0, |p| p[c]);
                match self.residual {
                    Some(res) => {
                        let res = &res[c * plane..(c + 1) * plane];
                        o.iter_mut().zip(res).for_each(|(o, &r)| *o = r + v);
                    }
                    None => o.fill(v),
                }
            });
    }
}
