//! The UNet's config, read from a diffusers `unet/config.json` (no per-family presets); the
//! features tessera does not implement are rejected with a clear message instead of loading
//! wrong weights.

use serde::Deserialize;
use std::path::Path;
use tessera_core::{Error, Result};

/// A diffusers value that may be given once for all blocks or once per block.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PerBlock {
    One(usize),
    Each(Vec<usize>),
}

impl PerBlock {
    pub fn get(&self, i: usize) -> usize {
        match self {
            PerBlock::One(v) => *v,
            PerBlock::Each(v) => v[i.min(v.len() - 1)],
        }
    }
}

/// The fields of diffusers' `UNet2DConditionModel` config that decide the architecture.
#[derive(Debug, Clone, Deserialize)]
pub struct UNetConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    pub layers_per_block: usize,
    /// Despite the name, diffusers uses this as the number of heads when
    /// `num_attention_heads` is absent (a documented diffusers quirk).
    pub attention_head_dim: PerBlock,
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock>,
    pub cross_attention_dim: usize,
    #[serde(default = "default_one")]
    pub transformer_layers_per_block: PerBlock,
    #[serde(default)]
    pub use_linear_projection: bool,
    #[serde(default)]
    pub center_input_sample: bool,
    #[serde(default = "default_true")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: f64,
    #[serde(default = "default_one_usize")]
    pub downsample_padding: usize,
    #[serde(default = "default_one_f64")]
    pub mid_block_scale_factor: f64,
    #[serde(default = "default_groups")]
    pub norm_num_groups: usize,
    #[serde(default = "default_eps")]
    pub norm_eps: f64,
    /// Latent side, or `[height, width]` for non-square models.
    #[serde(default)]
    pub sample_size: Option<crate::SampleSize>,
    /// `"text_time"` (SDXL): pooled text and size/crop conditioning added to the time embedding.
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    /// Sinusoid width of each of the six `time_ids` numbers (SDXL: 256).
    #[serde(default)]
    pub addition_time_embed_dim: Option<usize>,
    /// Input width of `add_embedding`: pooled text width + 6 * `addition_time_embed_dim`.
    #[serde(default)]
    pub projection_class_embeddings_input_dim: Option<usize>,
    #[serde(default)]
    pub reverse_transformer_layers_per_block: Option<serde_json::Value>,
    #[serde(default)]
    pub class_embed_type: Option<String>,
    #[serde(default)]
    pub time_cond_proj_dim: Option<usize>,
    #[serde(default)]
    pub upcast_attention: bool,
}

fn default_one() -> PerBlock {
    PerBlock::One(1)
}
fn default_one_usize() -> usize {
    1
}
fn default_one_f64() -> f64 {
    1.0
}
fn default_true() -> bool {
    true
}
fn default_groups() -> usize {
    32
}
fn default_eps() -> f64 {
    1e-5
}

impl UNetConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let cfg: Self = crate::config::read_json(path)?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let unsupported = |field: &str, what: String| {
            Err(Error::input(
                path,
                Some(field),
                what,
                "tessera supports SD 1.x / 2.x / Turbo and SDXL UNets",
            ))
        };
        match self.addition_embed_type.as_deref() {
            None => {}
            Some("text_time") if self.text_time_dims().is_none() => {
                return Err(Error::input(
                    path,
                    Some("addition_time_embed_dim"),
                    "addition_embed_type \"text_time\" without addition_time_embed_dim and \
                     projection_class_embeddings_input_dim",
                    "restore the config from the original SDXL model folder",
                ));
            }
            Some("text_time") => {}
            Some(t) => {
                return unsupported("addition_embed_type", format!("unsupported value {t:?}"))
            }
        }
        if self
            .reverse_transformer_layers_per_block
            .as_ref()
            .is_some_and(|v| !v.is_null())
        {
            return unsupported(
                "reverse_transformer_layers_per_block",
                "per-layer up-block transformer depths".into(),
            );
        }
        if let Some(t) = &self.class_embed_type {
            return unsupported("class_embed_type", format!("unsupported value {t:?}"));
        }
        if self.time_cond_proj_dim.is_some() {
            return unsupported("time_cond_proj_dim", "LCM guidance embedding".into());
        }
        let n = self.block_out_channels.len();
        if self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(Error::input(
                path,
                Some("down_block_types"),
                format!(
                    "{} down / {} up block types for {n} block_out_channels",
                    self.down_block_types.len(),
                    self.up_block_types.len()
                ),
                "every block needs one down and one up block type",
            ));
        }
        for (i, ty) in self.down_block_types.iter().enumerate() {
            let up = &self.up_block_types[n - 1 - i];
            let cross = ty == "CrossAttnDownBlock2D";
            if !(cross || ty == "DownBlock2D") {
                return unsupported("down_block_types", format!("block type {ty:?}"));
            }
            if up
                != if cross {
                    "CrossAttnUpBlock2D"
                } else {
                    "UpBlock2D"
                }
            {
                return unsupported(
                    "up_block_types",
                    format!("up block {up:?} does not mirror down block {ty:?}"),
                );
            }
        }
        Ok(())
    }

    /// `(addition_time_embed_dim, projection_class_embeddings_input_dim)` of a `text_time`
    /// UNet (SDXL), `None` for text-only UNets.
    pub fn text_time_dims(&self) -> Option<(usize, usize)> {
        match self.addition_embed_type.as_deref() {
            Some("text_time") => Some((
                self.addition_time_embed_dim?,
                self.projection_class_embeddings_input_dim?,
            )),
            _ => None,
        }
    }

    /// Heads per block, with diffusers' resolution of `num_attention_heads`/`attention_head_dim`.
    pub fn heads(&self, block: usize) -> usize {
        self.num_attention_heads
            .as_ref()
            .unwrap_or(&self.attention_head_dim)
            .get(block)
    }
}
