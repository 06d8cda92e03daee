//! What planning and the render need to know of a model folder, read from configs and weight
//! headers without loading weights.

use tessera_core::choices::SchedulerKind;
use tessera_core::{Error, Result};
use tessera_models::{info, ModelDir};
use tessera_nn::weights::WeightFile;
use tessera_nn::Runtime;
use tessera_plan::budget::{MemoryFacts, ModelFacts};
use tessera_plan::Settings;

/// The model folder the settings name, else the bundled default model.
pub fn model_path(s: &Settings) -> std::path::PathBuf {
    s.model.clone().unwrap_or_else(ModelDir::bundled_default)
}

/// Native size and memory facts for planning, for a render on `rt`'s device.
pub fn model_facts(dir: &ModelDir, rt: &Runtime) -> Result<ModelFacts> {
    let unet = dir.unet_config()?;
    let info = info::inspect(dir)?;
    let open = |component, stem| -> Result<WeightFile> {
        let path = dir.weights(component, stem)?;
        Ok(WeightFile::open(&path)?)
    };
    // Each UNet tensor belongs to the layer with the longest matching prefix (the head, "",
    // takes conv_in, the time embedding and the tail's norm and conv_out).
    let prefixes = unet.layer_prefixes();
    let mut per_layer = vec![0u64; prefixes.len()];
    for (name, n) in open("unet", "diffusion_pytorch_model")?.numels() {
        let layer = (0..prefixes.len())
            .filter(|&i| name.starts_with(&format!("{}.", prefixes[i])) || prefixes[i].is_empty())
            .max_by_key(|&i| prefixes[i].len())
            .unwrap_or(0);
        per_layer[layer] += n;
    }
    let (mut vae_encoder, mut vae_decoder) = (0, 0);
    for (name, n) in open("vae", "diffusion_pytorch_model")?.numels() {
        match name.starts_with("decoder.") || name.starts_with("post_quant_conv.") {
            true => vae_decoder += n,
            false => vae_encoder += n,
        }
    }
    Ok(ModelFacts {
        native_size: (info.native_size[0], info.native_size[1]),
        memory: MemoryFacts {
            // Both of SDXL's encoders are loaded together for the prompts.
            text_encoder_params: info.text_encoder.parameters
                + info.text_encoder_2.as_ref().map_or(0, |c| c.parameters),
            unet_params: info.unet.parameters,
            unet_largest_layer_params: per_layer.into_iter().max().unwrap_or(0),
            unet_channels: unet.block_out_channels[0],
            unet_heads: unet.heads(0),
            vae_encoder_params: vae_encoder,
            vae_decoder_params: vae_decoder,
            vae_channels: {
                let ch = dir.vae_config()?.block_out_channels;
                ch.get(1).or(ch.first()).copied().unwrap_or(0)
            },
            vae_mid_channels: dir
                .vae_config()?
                .block_out_channels
                .last()
                .copied()
                .unwrap_or(0),
            attention_scores: tessera_nn::layers::attention::materialises_scores(rt),
        },
    })
}

/// The scheduler the settings name, else the one the model folder's config names.
pub fn scheduler_kind(dir: &ModelDir, requested: Option<SchedulerKind>) -> Result<SchedulerKind> {
    if let Some(kind) = requested {
        return Ok(kind);
    }
    let class = dir.scheduler_config()?.class_name.unwrap_or_default();
    SchedulerKind::from_class_name(&class).ok_or_else(|| {
        Error::input(
            dir.path("scheduler/scheduler_config.json"),
            Some("_class_name"),
            format!("scheduler {class:?} is not implemented"),
            format!(
                "choose one with --scheduler ({})",
                SchedulerKind::NAMES.join(", ")
            ),
        )
    })
}
