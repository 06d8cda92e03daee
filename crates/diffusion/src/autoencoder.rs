//! The VAE as the engine uses it: pictures to scaled latents and back, whole or tiled, with the
//! half-precision overflow fallback. Each half is loaded at most once per render, when first
//! used, from a [`VaeSource`] (a model folder), and can be released when no longer needed.

use candle_core::{DType, Tensor};
use tessera_core::{Observer, Result};
use tessera_nn::vae::{self, Decoder, Encoder, LatentDist, VaeConfig};
use tessera_nn::Runtime;

/// Where the VAE's halves come from.
pub trait VaeSource {
    fn vae_config(&self) -> Result<VaeConfig>;
    fn load_vae_encoder(&self, rt: &Runtime, dtype: DType) -> Result<Encoder>;
    fn load_vae_decoder(&self, rt: &Runtime, dtype: DType) -> Result<Decoder>;
}

pub struct Autoencoder<'a> {
    source: &'a dyn VaeSource,
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

    fn tiled(&self, pixels: usize) -> Option<usize> {
        self.tile.filter(|&t| pixels > t)
    }

    /// Encode an image (1,3,H,W) in [-1,1] to the scaled latent mean (deterministic), tiled
    /// when larger than a tile.
    pub fn encode_mean(&mut self, image: &Tensor) -> Result<Tensor> {
        let cfg = self.source.vae_config()?;
        let (_, _, h, w) = image.dims4()?;
        let tile = self.tiled(h.max(w));
        let enc = match &mut self.encoder {
            Some(enc) => enc,
            slot => slot.insert(self.source.load_vae_encoder(&self.rt, DType::F32)?),
        };
        let image = self.rt.to_device(image)?;
        let dist = match tile {
            Some(t) => vae::tiled::encode(enc, &image, t, self.scratch)?,
            None => LatentDist::from_parameters(&enc.forward(&image)?)?,
        };
        Ok((dist.mean * cfg.scaling_factor)?)
    }

    /// Decode latents to an image tensor in [-1, 1], tiled when larger than a tile. A
    /// half-precision decode that overflows (a known SD VAE problem) is redone in f32, and the
    /// user is told.
    pub fn decode(&mut self, latents: &Tensor, observer: &dyn Observer) -> Result<Tensor> {
        let cfg = self.source.vae_config()?;
        let scaled = (latents / cfg.scaling_factor)?;
        let (_, _, h, w) = latents.dims4()?;
        if let Some(t) = self.tiled(cfg.factor() * h.max(w)) {
            // Tiles travel through f32 scratch stores, so the tiled decoder runs in f32.
            let scratch = self.scratch;
            return Ok(vae::tiled::decode(
                self.decoder(DType::F32)?,
                &scaled,
                t,
                scratch,
            )?);
        }
        let dtype = self.rt.vae_dtype(cfg.force_upcast);
        let image = self.whole_decode(&scaled, dtype)?;
        if dtype == DType::F32 || all_finite(&image)? {
            return Ok(image);
        }
        observer
            .note("note: the VAE overflowed in half precision (NaN/Inf); decoding again in f32");
        self.whole_decode(&scaled, DType::F32)
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
        let (_, dec) = match &mut self.decoder {
            Some(held) => held,
            slot => slot.insert((dtype, self.source.load_vae_decoder(&self.rt, dtype)?)),
        };
        Ok(dec)
    }

    pub fn release_encoder(&mut self) {
        self.encoder = None;
    }

    pub fn release_decoder(&mut self) {
        self.decoder = None;
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
