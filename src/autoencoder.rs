//! The VAE of one render, loaded at most once per half: the encoder serves the guide and every
//! image region, then goes; the decoder serves the guide decode and, when the memory budget
//! allows it to stay through the canvas pass, the final decode too.

use crate::model::{vae, ModelDir};
use crate::progress::Progress;
use crate::Result;
use candle_core::{DType, Tensor};

pub struct Autoencoder<'a> {
    dir: &'a ModelDir,
    encoder: Option<vae::Encoder>,
    decoder: Option<(DType, vae::Decoder)>,
}

impl<'a> Autoencoder<'a> {
    /// Nothing is loaded until first used.
    pub fn new(dir: &'a ModelDir) -> Self {
        Self {
            dir,
            encoder: None,
            decoder: None,
        }
    }

    /// Encode an image (1,3,H,W) in [-1,1] to the scaled latent mean (deterministic), tiled
    /// when larger than `tile` pixels.
    pub fn encode_mean(&mut self, image: &Tensor, tile: Option<usize>) -> Result<Tensor> {
        let cfg = self.dir.vae_config()?;
        let enc = match &mut self.encoder {
            Some(enc) => enc,
            slot => slot.insert(self.dir.load_vae_encoder(DType::F32)?),
        };
        let (_, _, h, w) = image.dims4()?;
        let dist = match tile {
            Some(t) if h.max(w) > t => vae::tiled::encode(enc, image, t)?,
            _ => vae::LatentDist::from_parameters(&enc.forward(image)?)?,
        };
        Ok((dist.mean * cfg.scaling_factor)?)
    }

    /// Decode latents to an image tensor in [-1, 1], tiled when larger than `tile` pixels. A
    /// half-precision decode that overflows (a known SD VAE problem) is redone in f32, and the
    /// user is told.
    pub fn decode(
        &mut self,
        latents: &Tensor,
        dtype: DType,
        tile: Option<usize>,
        progress: &Progress,
    ) -> Result<Tensor> {
        let cfg = self.dir.vae_config()?;
        let scaled = (latents / cfg.scaling_factor)?;
        let (_, _, h, w) = latents.dims4()?;
        if let Some(t) = tile.filter(|&t| 8 * h.max(w) > t) {
            // Tiles travel through f32 scratch stores, so the tiled decoder runs in f32.
            return Ok(vae::tiled::decode(self.decoder(DType::F32)?, &scaled, t)?);
        }
        // diffusers upcasts VAEs marked force_upcast (SD 1.x/2.x) to f32.
        let run_dtype = if cfg.force_upcast || dtype == DType::BF16 {
            DType::F32
        } else {
            dtype
        };
        let image = self
            .decoder(run_dtype)?
            .forward(&scaled.to_dtype(run_dtype)?)?
            .to_dtype(DType::F32)?;
        if run_dtype != DType::F32 && !all_finite(&image)? {
            progress.note("note: the VAE overflowed in f16 (NaN/Inf); decoding again in f32");
            return self.decode(latents, DType::F32, tile, progress);
        }
        Ok(image)
    }

    /// The decoder in `dtype`; one held in another dtype (only an f16 VAE decoding both whole
    /// and in f32 tiles) is replaced, not kept beside it.
    fn decoder(&mut self, dtype: DType) -> Result<&vae::Decoder> {
        if self.decoder.as_ref().is_some_and(|(d, _)| *d != dtype) {
            self.decoder = None;
        }
        let (_, dec) = match &mut self.decoder {
            Some(held) => held,
            slot => slot.insert((dtype, self.dir.load_vae_decoder(dtype)?)),
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

/// One-shot encode (the encoder is dropped afterwards).
pub fn encode_mean(dir: &ModelDir, image: &Tensor, tile: Option<usize>) -> Result<Tensor> {
    Autoencoder::new(dir).encode_mean(image, tile)
}

/// One-shot decode (the decoder is dropped afterwards).
pub fn decode(
    dir: &ModelDir,
    latents: &Tensor,
    dtype: DType,
    tile: Option<usize>,
    progress: &Progress,
) -> Result<Tensor> {
    Autoencoder::new(dir).decode(latents, dtype, tile, progress)
}

fn all_finite(t: &Tensor) -> Result<bool> {
    Ok(t.flatten_all()?
        .to_vec1::<f32>()?
        .iter()
        .all(|v| v.is_finite()))
}
