//! The tiled VAE's mid-block attention: exact softmax attention over every pixel of the
//! image, its keys and values gathered once, band by band, then every band of queries
//! attending to all of them.

use super::{Scratch, Store, Tiling};
use crate::kernels::{self, flash, flash_bf16};
use crate::layers::{GroupStats, HeldKeys};
use crate::vae::program::{AttentionBlock, ATTENTION_BUDGET};
use candle_core::{Result, Tensor};
use std::ops::Range;
use tessera_core::recycle::recycling;

/// Every pixel's key and value, held once for the flash kernels: f32, or bf16 where the
/// block's projections multiply in bf16 (as [`crate::layers::attention::heads`] chooses).
enum FlashKeys {
    F32(flash::Keys),
    Bf16(flash_bf16::Keys),
}

impl FlashKeys {
    fn new(a: &AttentionBlock, c: usize, m: usize, scale: f32) -> Self {
        match a.bf16_products() && kernels::bf16::available() {
            true => Self::Bf16(flash_bf16::Keys::empty(c, m, scale)),
            false => Self::F32(flash::Keys::new(c, m, scale)),
        }
    }

    fn set(&mut self, j: usize, key: &[f32], value: &[f32]) {
        match self {
            Self::F32(keys) => keys.set(j, key, value),
            Self::Bf16(keys) => keys.set(j, key, value),
        }
    }

    fn attend_all(&self, q: &[f32], out: &mut [f32]) {
        match self {
            Self::F32(keys) => keys.attend_all(q, out),
            Self::Bf16(keys) => keys.attend_all(q, out),
        }
    }
}

/// A band (1, C, r, w) as tokens (r·w, C).
fn tokens(band: &Tensor) -> Result<Tensor> {
    let (_, c, h, w) = band.dims4()?;
    band.reshape((c, h * w))?.t()?.contiguous()
}

/// Exact softmax attention over all pixels: keys and values gathered once, band by band;
/// then every band of queries attends to all of them.
pub(super) fn attention(
    a: &AttentionBlock,
    x: &Store,
    sx: &GroupStats,
    t: &Tiling,
    scratch: &Scratch,
) -> Result<(Store, GroupStats)> {
    let (c, h, w) = (x.c, x.h, x.w);
    // The keys and values come before the output store: no spare store memory meanwhile.
    scratch.release_spare();
    let norm = a.norm.affine_with(sx, false);
    let rows = t.rows(h, w);
    let bands: Vec<Range<usize>> = (0..h)
        .step_by(rows)
        .map(|r0| r0..(r0 + rows).min(h))
        .collect();
    let normed_tokens = |r: &Range<usize>| tokens(&norm.apply(&x.read_rows(r.clone())?)?);
    let scale = a.scale()? as f32;
    let flash = flash::applies() && kernels::usable(&x.read_rows(0..1)?);
    // Keys and values of every pixel, held once.
    let mut keys = flash.then(|| FlashKeys::new(a, c, h * w, scale));
    let (mut all_k, mut all_v) = (Vec::new(), Vec::new());
    // Bands allocate alike: their buffers are recycled (see `tessera_core::recycle`).
    recycling(|| -> Result<()> {
        for r in &bands {
            let toks = normed_tokens(r)?;
            let (k, v) = (a.k.forward(&toks)?, a.v.forward(&toks)?);
            match &mut keys {
                Some(keys) => kernels::with_f32(&k, |ks| {
                    kernels::with_f32(&v, |vs| {
                        for (j, (kr, vr)) in ks.chunks(c).zip(vs.chunks(c)).enumerate() {
                            keys.set(r.start * w + j, kr, vr);
                        }
                    })
                })??,
                None => {
                    all_k.push(k);
                    all_v.push(v);
                }
            }
        }
        Ok(())
    })?;
    // (1, 1, tokens, C): one head. Each band list is dropped as soon as it is joined.
    let held = match keys {
        Some(_) => None,
        None => {
            let join = |bands: Vec<Tensor>| Tensor::cat(&bands, 0)?.unsqueeze(0)?.unsqueeze(0);
            let k = join(std::mem::take(&mut all_k))?;
            let v = join(std::mem::take(&mut all_v))?;
            Some(HeldKeys::new(&k, &v)?)
        }
    };
    let mut out = Store::new(c, h, w, scratch)?;
    let mut stats = GroupStats::new(c);
    recycling(|| -> Result<()> {
        for r in &bands {
            tessera_core::interrupt::check_candle()?;
            let xb = x.read_rows(r.clone())?;
            let q = a.q.forward(&tokens(&norm.apply(&xb)?)?)?;
            let n = q.dim(0)?;
            let attended = match (&keys, &held) {
                (Some(keys), _) => kernels::with_f32(&q, |qs| {
                    kernels::new_f32((n, c), |o| keys.attend_all(qs, o))
                })??,
                (None, Some(held)) => {
                    let q = q.unsqueeze(0)?.unsqueeze(0)?;
                    let y = held.attend(&q, scale as f64, ATTENTION_BUDGET)?;
                    y.squeeze(0)?.squeeze(0)?.to_dtype(q.dtype())?
                }
                (None, None) => unreachable!("keys are held one way or the other"),
            };
            let y = a.out.forward(&attended)?;
            let y = (y.t()?.reshape((1, c, r.len(), w))? + xb)?;
            stats.add(&y)?;
            out.write_rows(r.start, &y)?;
        }
        Ok(())
    })?;
    Ok((out, stats))
}
