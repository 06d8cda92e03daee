//! The architecture of a single-file SD 1.x / 2.x checkpoint, read from its tensor shapes
//! where they determine it (channels, levels, layers per block, attention placement, context
//! width, projections, text-encoder sizes); what shapes cannot tell (heads, native size,
//! prediction type, scheduler) comes from the family's standard diffusers config, as
//! diffusers' `from_single_file` takes it from the family's hub config. `--config` overrides.
//! SDXL checkpoints: `infer_sdxl`, from the pieces here.

use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tessera_core::{Error, Result};
use tessera_diffusion::scheduler::SchedulerConfig;
use tessera_nn::ldm::{SD1_TEXT_PREFIX, SD2_TEXT_PREFIX, UNET_PREFIX, VAE_PREFIX};
use tessera_nn::weights::WeightFile;
use tessera_nn::{clip, unet, vae};

/// The configs of a checkpoint, as a diffusers folder would give them.
#[derive(Debug, Clone)]
pub struct Inferred {
    pub family: &'static str,
    pub unet: unet::UNetConfig,
    pub vae: vae::VaeConfig,
    pub text: clip::ClipTextConfig,
    pub scheduler: SchedulerConfig,
    /// The tokenizer's padding token (SD 2.x pads with "!", SD 1.x with the end token).
    pub pad_token: &'static str,
    /// SDXL's second text encoder (its tokenizer pads with "!").
    pub text_2: Option<clip::ClipTextConfig>,
    /// `model_index.json`'s `force_zeros_for_empty_prompt` (SDXL base: true).
    pub force_zeros_for_empty_prompt: bool,
}

/// A checkpoint's tensor shapes by name, and its path for error messages.
pub(crate) struct Shapes {
    path: PathBuf,
    shapes: HashMap<String, Vec<usize>>,
}

impl Shapes {
    pub(crate) fn of(file: &WeightFile) -> Self {
        Self::new(
            file.path(),
            file.shapes().map(|(n, s)| (n.to_string(), s.to_vec())),
        )
    }

    pub(crate) fn new(path: &Path, shapes: impl IntoIterator<Item = (String, Vec<usize>)>) -> Self {
        Self {
            path: path.to_path_buf(),
            shapes: shapes.into_iter().collect(),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn get(&self, key: &str) -> Option<Vec<usize>> {
        self.shapes.get(key).cloned()
    }

    pub(crate) fn dim(&self, key: &str, i: usize) -> Result<usize> {
        self.get(key)
            .and_then(|s| s.get(i).copied())
            .ok_or_else(|| self.missing(key))
    }

    pub(crate) fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// How many `{prefix}{i}.{suffix}` exist, counting from 0.
    pub(crate) fn count(&self, prefix: &str, suffix: &str) -> usize {
        (0..)
            .take_while(|i| self.has(&format!("{prefix}{i}.{suffix}")))
            .count()
    }

    pub(crate) fn missing(&self, key: &str) -> Error {
        Error::input(
            &self.path,
            Some(key),
            "the checkpoint lacks this tensor, so its architecture cannot be read",
            "give --config DIR, a diffusers folder of the checkpoint's architecture",
        )
    }
}

pub(crate) fn parse<T: serde::de::DeserializeOwned>(
    path: &Path,
    what: &str,
    v: Value,
) -> Result<T> {
    serde_json::from_value(v).map_err(|e| {
        Error::input(
            path,
            None,
            format!("inferred {what} config is invalid: {e}"),
            "give --config DIR",
        )
    })
}

/// What the shapes alone tell: the diffusers config fields they determine, and whether the
/// text encoder is OpenCLIP (SD 2.x).
#[derive(Debug, Clone)]
pub struct Architecture {
    pub unet: Value,
    pub vae: Value,
    pub text: Value,
    pub sd2: bool,
}

/// The configs of the SD 1.x / 2.x checkpoint `file`: its shapes, and the family's standard
/// values for the rest. A file of non-standard sizes cannot borrow a family's heads: refused.
pub fn infer(file: &WeightFile) -> Result<Inferred> {
    let path = file.path();
    let Architecture {
        mut unet,
        vae,
        text,
        sd2,
    } = shapes_architecture(&Shapes::of(file))?;
    let width = if sd2 { 1024 } else { 768 };
    if unet["cross_attention_dim"] != width || text["hidden_size"] != width {
        return Err(Error::input(
            path,
            None,
            format!(
                "non-standard sizes (context width {}, text width {}): the family's heads and \
                 native size do not apply",
                unet["cross_attention_dim"], text["hidden_size"]
            ),
            "give --config DIR, a diffusers folder of the checkpoint's architecture",
        ));
    }
    // Not in the shapes: the family's standard config.
    unet["attention_head_dim"] = if sd2 {
        json!([5, 10, 20, 20])
    } else {
        json!(8)
    };
    unet["sample_size"] = json!(if sd2 { 96 } else { 64 });
    unet["upcast_attention"] = json!(sd2);
    // SD 1.5's and SD 2.1 (768-v)'s scheduler settings, on DDIM.
    let scheduler = json!({
        "_class_name": "DDIMScheduler",
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "steps_offset": 1,
        "timestep_spacing": "leading",
        "prediction_type": if sd2 { "v_prediction" } else { "epsilon" },
    });
    Ok(Inferred {
        family: if sd2 { "SD 2.x" } else { "SD 1.x" },
        unet: parse(path, "UNet", unet)?,
        vae: parse(path, "VAE", vae)?,
        text: parse(path, "text encoder", text)?,
        scheduler: parse(path, "scheduler", scheduler)?,
        pad_token: if sd2 { "!" } else { "<|endoftext|>" },
        text_2: None,
        force_zeros_for_empty_prompt: false,
    })
}

/// The config fields an SD 1.x / 2.x checkpoint's shapes determine.
pub fn architecture(file: &WeightFile) -> Result<Architecture> {
    shapes_architecture(&Shapes::of(file))
}

fn shapes_architecture(s: &Shapes) -> Result<Architecture> {
    let path = s.path();
    let sd2 = if s.has(&format!(
        "{SD1_TEXT_PREFIX}text_model.final_layer_norm.weight"
    )) {
        false
    } else if s.has(&format!("{SD2_TEXT_PREFIX}ln_final.weight")) {
        true
    } else {
        return Err(Error::input(
            path,
            None,
            "cannot tell the model family: neither an SD 1.x (cond_stage_model.transformer.*) \
             nor an SD 2.x (cond_stage_model.model.*) text encoder",
            "give --config DIR, a diffusers folder of the checkpoint's architecture",
        ));
    };
    Ok(Architecture {
        unet: unet_fields(s)?,
        vae: vae_fields(s)?,
        text: match sd2 {
            // SD 2.x runs OpenCLIP's penultimate layer: one block fewer.
            true => open_clip_fields(s, SD2_TEXT_PREFIX, 1)?,
            false => clip_fields(s, SD1_TEXT_PREFIX)?,
        },
        sd2,
    })
}

/// The UNet config fields the LDM UNet's shapes determine: levels from the downsamplers,
/// channels from each level's first resnet.
pub(crate) fn unet_fields(s: &Shapes) -> Result<Value> {
    let u = |k: &str| format!("{UNET_PREFIX}{k}");
    let first_down = (1..64)
        .find(|i| s.has(&u(&format!("input_blocks.{i}.0.op.weight"))))
        .ok_or_else(|| s.missing(&u("input_blocks.*.0.op.weight")))?;
    let per = first_down;
    let layers_per_block = per - 1;
    // After conv_in: L resnet blocks per level and a downsampler between levels.
    let blocks = (1..)
        .take_while(|i| {
            s.has(&u(&format!("input_blocks.{i}.0.in_layers.0.weight")))
                || s.has(&u(&format!("input_blocks.{i}.0.op.weight")))
        })
        .count();
    let levels = (blocks + 1) / per;
    let mut channels = Vec::new();
    let mut attention = Vec::new();
    for level in 0..levels {
        let block = 1 + level * per;
        channels.push(s.dim(
            &u(&format!("input_blocks.{block}.0.out_layers.3.weight")),
            0,
        )?);
        attention.push(s.has(&u(&format!("input_blocks.{block}.1.proj_in.weight"))));
    }
    let first_attn = attention.iter().position(|&a| a).unwrap_or(0);
    let attn = |k: &str| u(&format!("input_blocks.{}.1.{k}", 1 + first_attn * per));
    let context = s.dim(&attn("transformer_blocks.0.attn2.to_k.weight"), 1)?;
    let linear_projection = s.get(&attn("proj_in.weight")).is_some_and(|d| d.len() == 2);
    let down: Vec<&str> = attention
        .iter()
        .map(|&a| {
            if a {
                "CrossAttnDownBlock2D"
            } else {
                "DownBlock2D"
            }
        })
        .collect();
    let up: Vec<&str> = attention
        .iter()
        .rev()
        .map(|&a| if a { "CrossAttnUpBlock2D" } else { "UpBlock2D" })
        .collect();
    Ok(json!({
        "in_channels": s.dim(&u("input_blocks.0.0.weight"), 1)?,
        "out_channels": s.dim(&u("out.2.weight"), 0)?,
        "block_out_channels": channels,
        "down_block_types": down,
        "up_block_types": up,
        "layers_per_block": layers_per_block,
        "cross_attention_dim": context,
        "use_linear_projection": linear_projection,
    }))
}

/// The VAE config fields its shapes determine (the SD 1.x/2.x scaling factor).
pub(crate) fn vae_fields(s: &Shapes) -> Result<Value> {
    let v = |k: &str| format!("{VAE_PREFIX}{k}");
    let vae_levels = s.count(&v("encoder.down."), "block.0.conv1.weight");
    let vae_channels: Vec<usize> = (0..vae_levels)
        .map(|i| s.dim(&v(&format!("encoder.down.{i}.block.0.conv2.weight")), 0))
        .collect::<Result<_>>()?;
    Ok(json!({
        "in_channels": s.dim(&v("encoder.conv_in.weight"), 1)?,
        "out_channels": s.dim(&v("decoder.conv_out.weight"), 0)?,
        "latent_channels": s.dim(&v("decoder.conv_in.weight"), 1)?,
        "block_out_channels": vae_channels,
        "layers_per_block": s.count(&v("encoder.down.0.block."), "conv1.weight"),
        "scaling_factor": 0.18215,
        "force_upcast": true,
    }))
}

/// A CLIP text encoder stored in the Hugging Face layout under `prefix`.
pub(crate) fn clip_fields(s: &Shapes, prefix: &str) -> Result<Value> {
    let t = |k: &str| format!("{prefix}text_model.{k}");
    let hidden = s.dim(&t("embeddings.token_embedding.weight"), 1)?;
    Ok(json!({
        "vocab_size": s.dim(&t("embeddings.token_embedding.weight"), 0)?,
        "hidden_size": hidden,
        "intermediate_size": s.dim(&t("encoder.layers.0.mlp.fc1.weight"), 0)?,
        "num_hidden_layers": s.count(&t("encoder.layers."), "layer_norm1.weight"),
        "num_attention_heads": hidden / 64,
        "max_position_embeddings": s.dim(&t("embeddings.position_embedding.weight"), 0)?,
        "hidden_act": "quick_gelu",
    }))
}

/// An OpenCLIP text encoder under `prefix`, less its last `drop` blocks (those diffusers
/// configs leave out).
pub(crate) fn open_clip_fields(s: &Shapes, prefix: &str, drop: usize) -> Result<Value> {
    let t = |k: &str| format!("{prefix}{k}");
    let hidden = s.dim(&t("token_embedding.weight"), 1)?;
    Ok(json!({
        "vocab_size": s.dim(&t("token_embedding.weight"), 0)?,
        "hidden_size": hidden,
        "intermediate_size": s.dim(&t("transformer.resblocks.0.mlp.c_fc.weight"), 0)?,
        "num_hidden_layers": s.count(&t("transformer.resblocks."), "ln_1.weight").saturating_sub(drop),
        "num_attention_heads": hidden / 64,
        "max_position_embeddings": s.dim(&t("positional_embedding"), 0)?,
        "hidden_act": "gelu",
    }))
}
