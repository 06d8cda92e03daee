//! Reading diffusers / transformers `config.json` files, and the config value types the
//! networks share.

use serde::de::DeserializeOwned;
use std::path::Path;
use tessera_core::{Error, Result};

/// Read and parse a JSON config, naming the file in any error.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::input(
            path,
            None,
            format!("cannot read: {e}"),
            "point --model at a diffusers model folder (model_index.json, unet/, vae/, \
             text_encoder/, tokenizer/, scheduler/)",
        )
    })?;
    serde_json::from_str(&text).map_err(|e| {
        Error::input(
            path,
            None,
            format!("invalid config: {e}"),
            "restore the file from the original diffusers model folder",
        )
    })
}

/// A diffusers `sample_size`: one side for square models, or `[height, width]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(untagged)]
pub enum SampleSize {
    Square(usize),
    HeightWidth([usize; 2]),
}

impl SampleSize {
    /// `(width, height)`, tessera's order.
    pub fn wh(self) -> (usize, usize) {
        match self {
            SampleSize::Square(s) => (s, s),
            SampleSize::HeightWidth([h, w]) => (w, h),
        }
    }
}
