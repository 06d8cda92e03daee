//! The VAE as the engine uses it: pictures to scaled latents and back, whole or tiled, with the
//! half-precision overflow fallback. Each half is loaded at most once per render, when first
//! used, from a [`VaeSource`] (a model folder), and can be released when no longer needed.

use candle_core::{DType, Tensor};
use std::ops::Range;
use tessera_core::{Observer, Result};
use tessera_nn::vae::tiled::{BandSink, Input};
use tessera_nn::vae::{self, Decoder, Encoder, LatentDist, VaeConfig};
use tessera_nn::Runtime;

/// Where the VAE's halves come from.
pub trait VaeSource {
    fn vae_config(&self) -> Result<VaeConfig>;
    fn load_vae_encoder(&self, rt: &Runtime, dtype: DType) -> Result<Encoder>;
    fn load_vae_decoder(&self, rt: &Runtime, dtype: DType) -> Result<Decoder>;
}

/// The loaded halves of a VAE, handed by one render to the next when they share the weights.
#[derive(Default)]
pub struct Halves {
    encoder: Option<Encoder>,
    decoder: Option<(DType, Decoder)>,
}

impl Halves {
    pub fn is_empty(&self) -> bool {
        self.encoder.is_none() && self.decoder.is_none()
    }
}

pub struct Autoencoder<'a> {
    source: &'a dyn VaeSource,
    /// The halves outlive this render (a following one shares them): releasing keeps them.
    keep: bool,
    rt: Runtime,
    /// Tile side in pixels; `None`: whole images.
    tile: Option<usize>,
    /// Bytes of whole-image scratch a tiled pass may keep in RAM (`None`: all of it).
    scratch: Option<u64>,
    encoder: Option<Encoder>,
    decoder: Option<(DType, Decoder)>,
}

impl<'a> Autoencoder<'a> {
    /// Nothing is loaded until first used.
    pub fn new(source: &'a dyn VaeSource, rt: &Runtime, tile: Option<usize>) -> Self {
        Self {
            source,
            rt: rt.clone(),
            keep: false,
            tile,
            scratch: None,
            encoder: None,
            decoder: None,
        }
    }

    /// Keep at most `bytes` of a tiled pass's whole-image scratch in RAM, the rest in files.
    pub fn with_scratch(mut self, bytes: Option<u64>) -> Self {
        self.scratch = bytes;
        self
    }

    /// Start with halves an earlier render loaded from the same weights.
    pub fn with_halves(mut self, halves: Halves) -> Self {
        self.encoder = halves.encoder;
        self.decoder = halves.decoder;
        self
    }

    /// Hold the halves once loaded, even where this render alone would release them: a
    /// following render shares them ([`Autoencoder::into_halves`]).
    pub fn keep_loaded(mut self, keep: bool) -> Self {
        self.keep = keep;
        self
    }

    /// The halves loaded now, for the next render.
    pub fn into_halves(self) -> Halves {
        Halves {
            encoder: self.encoder,
            decoder: self.decoder,
        }
    }

    fn tiled(&self, pixels: usize) -> Option<usize> {
        self.tile.filter(|&t| pixels > t)
    }

    /// Encode an image (1,3,H,W) in [-1,1] to the scaled latent mean (deterministic), tiled
    /// when larger than a tile.
    pub fn encode_mean(&mut self, image: &Tensor) -> Result<Tensor> {
        let (_, c, h, w) = image.dims4()?;
        self.encode_mean_rows((c, h, w), &|r| image.narrow(2, r.start, r.len()))
    }

    /// [`Autoencoder::encode_mean`] of an image (C, H, W) given as rows `rows(range)` →
    /// (1, C, rows, W): tiled, it is read band by band and never held whole.
    pub fn encode_mean_rows(
        &mut self,
        (c, h, w): (usize, usize, usize),
        rows: &dyn Fn(Range<usize>) -> candle_core::Result<Tensor>,
    ) -> Result<Tensor> {
        let cfg = self.source.vae_config()?;
        let tile = self.tiled(h.max(w));
        let enc = match &mut self.encoder {
            Some(enc) => enc,
            slot => {
                let weights = self.rt.vae_f32_weight_dtype();
                slot.insert(self.source.load_vae_encoder(&self.rt, weights)?)
            }
        };
        let rt = &self.rt;
        let on_device = |r: Range<usize>| rt.to_device(&rows(r)?);
        let dist = match tile {
            Some(t) => {
                let input = Input::Rows {
                    dims: (c, h, w),
                    rows: &on_device,
                };
                vae::tiled::encode_input(enc, input, t, self.scratch)?
            }
            None => LatentDist::from_parameters(&enc.forward(&on_device(0..h)?)?)?,
        };
        Ok((dist.mean * cfg.scaling_factor)?)
    }

    /// Decode latents to an image tensor in [-1, 1], tiled when larger than a tile. A
    /// half-precision decode that overflows (a known SD VAE problem) is redone in f32, and the
    /// user is told.
    pub fn decode(&mut self, latents: &Tensor, observer: &dyn Observer) -> Result<Tensor> {
        let mut bands = Vec::new();
        self.decode_bands(latents, observer, &mut |_, band| {
            bands.push(band);
            Ok(())
        })?;
        Ok(Tensor::cat(&bands, 2)?)
    }

    /// [`Autoencoder::decode`], handing the image (f32, in [-1, 1]) to `sink` in bands of
    /// whole rows, top to bottom: tiled, the whole picture is never held.
    pub fn decode_bands(
        &mut self,
        latents: &Tensor,
        observer: &dyn Observer,
        sink: &mut BandSink,
    ) -> Result<()> {
        let cfg = self.source.vae_config()?;
        let scaled = (latents / cfg.scaling_factor)?;
        let (_, _, h, w) = latents.dims4()?;
        if let Some(t) = self.tiled(cfg.factor() * h.max(w)) {
            // Tiles travel through f32 scratch stores, so the tiled decoder runs in f32.
            let scratch = self.scratch;
            let decoder = self.decoder(DType::F32)?;
            return Ok(vae::tiled::decode_bands(
                decoder, &scaled, t, scratch, sink,
            )?);
        }
        let dtype = self.rt.vae_dtype(cfg.force_upcast);
        let mut image = self.whole_decode(&scaled, dtype)?;
        if dtype != DType::F32 && !all_finite(&image)? {
            observer.note(
                "note: the VAE overflowed in half precision (NaN/Inf); decoding again in f32",
            );
            image = self.whole_decode(&scaled, DType::F32)?;
        }
        Ok(sink(0, image)?)
    }

    fn whole_decode(&mut self, scaled: &Tensor, dtype: DType) -> Result<Tensor> {
        let image = self.decoder(dtype)?.forward(&scaled.to_dtype(dtype)?)?;
        Ok(image.to_dtype(DType::F32)?)
    }

    /// The decoder in `dtype`; one held in another dtype (only an f16 VAE decoding both whole
    /// and in f32 tiles) is replaced, not kept beside it.
    fn decoder(&mut self, dtype: DType) -> Result<&Decoder> {
        if self.decoder.as_ref().is_some_and(|(d, _)| *d != dtype) {
            self.decoder = None;
        }
        // Computing in f32, the weights may be bf16 for the CPU's bf16 kernels.
        let weights = match dtype {
            DType::F32 => self.rt.vae_f32_weight_dtype(),
            other => other,
        };
        let (_, dec) = match &mut self.decoder {
            Some(held) => held,
            slot => slot.insert((dtype, self.source.load_vae_decoder(&self.rt, weights)?)),
        };
        Ok(dec)
    }

    /// Free the encoder (unless kept for a following render).
    pub fn release_encoder(&mut self) {
        if !self.keep {
            self.encoder = None;
        }
    }

    /// Free the decoder (unless kept for a following render).
    pub fn release_decoder(&mut self) {
        if !self.keep {
            self.decoder = None;
        }
    }

    /// Which halves are loaded now: `(encoder, decoder)`.
    pub fn loaded(&self) -> (bool, bool) {
        (self.encoder.is_some(), self.decoder.is_some())
    }
}

fn all_finite(t: &Tensor) -> Result<bool> {
    Ok(t.flatten_all()?
        .to_dtype(DType::F32)?
        .to_vec1::<f32>()?
        .iter()
        .all(|v| v.is_finite()))
}
