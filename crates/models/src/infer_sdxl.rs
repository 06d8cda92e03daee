//! The architecture of a single-file SDXL checkpoint (`conditioner.embedders.*`, as the released
//! SDXL files): UNet, VAE and both text encoders from the tensor shapes, including what SDXL
//! adds (transformer depth per level, the `label_emb` widths of the size/crop conditioning);
//! heads, native size, scheduler and tokenizers from SDXL base's standard config.
//! `--config` overrides.

use crate::infer::{
    clip_fields, open_clip_fields, parse, unet_fields, vae_fields, Inferred, Shapes,
};
use serde_json::{json, Value};
use tessera_core::{Error, Result};
use tessera_nn::ldm::{SDXL_TEXT2_PREFIX, SDXL_TEXT_PREFIX, UNET_PREFIX};
use tessera_nn::weights::WeightFile;

/// The config fields an SDXL checkpoint's shapes determine.
#[derive(Debug, Clone)]
pub struct Architecture {
    pub unet: Value,
    pub vae: Value,
    /// CLIP-L (`conditioner.embedders.0.transformer.*`).
    pub text: Value,
    /// OpenCLIP-bigG with its projection (`conditioner.embedders.1.model.*`).
    pub text_2: Value,
}

/// Whether `file` is an SDXL checkpoint: both of its text encoders are there.
pub fn is_sdxl(file: &WeightFile) -> bool {
    file.contains(&format!("{SDXL_TEXT2_PREFIX}ln_final.weight"))
        && file.contains(&format!(
            "{SDXL_TEXT_PREFIX}text_model.final_layer_norm.weight"
        ))
}

/// The SDXL checkpoint's configs. Only SDXL base's sizes (context 2048 from 768 + 1280 wide
/// encoders, three levels) can borrow its heads; other sizes are refused with `--config`.
pub fn infer(file: &WeightFile) -> Result<Inferred> {
    infer_shapes(&Shapes::of(file))
}

pub(crate) fn infer_shapes(s: &Shapes) -> Result<Inferred> {
    let path = s.path();
    let Architecture {
        mut unet,
        mut vae,
        text,
        mut text_2,
    } = shapes_architecture(s)?;
    let standard = unet["cross_attention_dim"] == 2048
        && text["hidden_size"] == 768
        && text_2["hidden_size"] == 1280
        && unet["block_out_channels"].as_array().map(Vec::len) == Some(3);
    if !standard {
        return Err(Error::input(
            path,
            None,
            format!(
                "an SDXL checkpoint of non-standard sizes (context width {}, text widths {} + \
                 {}, channels {}): SDXL base's heads and native size do not apply",
                unet["cross_attention_dim"],
                text["hidden_size"],
                text_2["hidden_size"],
                unet["block_out_channels"]
            ),
            "give --config DIR, a diffusers folder of the checkpoint's architecture",
        ));
    }
    // Not in the shapes: stable-diffusion-xl-base-1.0's configs.
    unet["attention_head_dim"] = json!([5, 10, 20]);
    unet["sample_size"] = json!(128);
    vae["scaling_factor"] = json!(0.13025);
    text_2["architectures"] = json!(["CLIPTextModelWithProjection"]);
    let scheduler = json!({
        "_class_name": "EulerDiscreteScheduler",
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "num_train_timesteps": 1000,
        "steps_offset": 1,
        "timestep_spacing": "leading",
        "interpolation_type": "linear",
        "prediction_type": "epsilon",
    });
    Ok(Inferred {
        family: "SDXL",
        unet: parse(path, "UNet", unet)?,
        vae: parse(path, "VAE", vae)?,
        text: parse(path, "text encoder", text)?,
        scheduler: parse(path, "scheduler", scheduler)?,
        pad_token: "<|endoftext|>",
        text_2: Some(parse(path, "text encoder 2", text_2)?),
        force_zeros_for_empty_prompt: true,
    })
}

/// The config fields the shapes of the SDXL checkpoint `file` determine.
pub fn architecture(file: &WeightFile) -> Result<Architecture> {
    shapes_architecture(&Shapes::of(file))
}

fn shapes_architecture(s: &Shapes) -> Result<Architecture> {
    let mut unet = unet_fields(s)?;
    let u = |k: &str| format!("{UNET_PREFIX}{k}");
    let per = unet["layers_per_block"].as_u64().unwrap_or(0) as usize + 1;
    let levels = unet["block_out_channels"].as_array().map_or(0, Vec::len);
    let depth = |block: String| {
        s.count(
            &u(&format!("{block}.1.transformer_blocks.")),
            "norm1.weight",
        )
    };
    // Transformer blocks per level (1 where a level has no attention, as SDXL's config says);
    // the mid block and the up blocks must repeat them, as diffusers builds them.
    let per_level: Vec<usize> = (0..levels)
        .map(|l| depth(format!("input_blocks.{}", 1 + l * per)).max(1))
        .collect();
    let mid = depth("middle_block".into());
    let up_ok = (0..levels).all(|i| {
        let d = depth(format!("output_blocks.{}", i * per));
        d == 0 || d == per_level[levels - 1 - i]
    });
    if !up_ok || mid != per_level.last().copied().unwrap_or(0) {
        return Err(Error::input(
            s.path(),
            Some(&u("middle_block.1.transformer_blocks")),
            format!(
                "transformer depths that SDXL's layout cannot describe (down {per_level:?}, \
                 mid {mid})"
            ),
            "give --config DIR, a diffusers folder of the checkpoint's architecture",
        ));
    }
    unet["transformer_layers_per_block"] = json!(per_level);
    // label_emb.0.0 maps [pooled text, 6 sinusoids of time_ids] to the time embedding.
    let add_in = s.dim(&u("label_emb.0.0.weight"), 1)?;
    let pooled = s.dim(&format!("{SDXL_TEXT2_PREFIX}text_projection"), 1)?;
    let time = add_in
        .checked_sub(pooled)
        .filter(|t| t % 6 == 0)
        .ok_or_else(|| {
            Error::input(
                s.path(),
                Some(&u("label_emb.0.0.weight")),
                format!(
                    "input width {add_in} is not the pooled text width {pooled} plus six \
                 time-id embeddings"
                ),
                "give --config DIR, a diffusers folder of the checkpoint's architecture",
            )
        })?;
    unet["addition_embed_type"] = json!("text_time");
    unet["addition_time_embed_dim"] = json!(time / 6);
    unet["projection_class_embeddings_input_dim"] = json!(add_in);
    let mut text_2 = open_clip_fields(s, SDXL_TEXT2_PREFIX, 0)?;
    text_2["projection_dim"] = json!(pooled);
    Ok(Architecture {
        unet,
        vae: vae_fields(s)?,
        text: clip_fields(s, SDXL_TEXT_PREFIX)?,
        text_2,
    })
}

#[cfg(test)]
#[path = "infer_sdxl_tests.rs"]
mod tests;
