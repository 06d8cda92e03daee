//! What planning and the render need to know of a model folder, read from configs and weight
//! headers without loading weights.

use tessera_core::choices::SchedulerKind;
use tessera_core::{Error, Result};
use tessera_models::{info, ModelDir};
use tessera_nn::Runtime;
use tessera_plan::budget::{MemoryFacts, ModelFacts};
use tessera_plan::Settings;

/// The model folder the settings name, else the bundled default model.
pub fn model_path(s: &Settings) -> std::path::PathBuf {
    s.model.clone().unwrap_or_else(ModelDir::bundled_default)
}

/// The model the settings name (a folder, or a single file with its `--config`), with their
/// LoRAs.
pub fn open_model(s: &Settings) -> Result<ModelDir> {
    ModelDir::open_model(model_path(s), s.model_config.as_deref())?.with_loras(&s.loras)
}

/// The device the settings ask for, at their precision.
pub fn open_runtime(s: &Settings) -> Result<Runtime> {
    Runtime::open(s.device, s.precision)
        .map_err(|e| Error::input(&s.origin, Some("canvas.device"), e.message, e.fix))
}

/// Native size and memory facts for planning, for a render on `rt`'s device.
pub fn model_facts(dir: &ModelDir, rt: &Runtime) -> Result<ModelFacts> {
    let unet = dir.unet_config()?;
    let info = info::inspect(dir)?;
    // Each UNet tensor belongs to the layer with the longest matching prefix (the head, "",
    // takes conv_in, the time embedding and the tail's norm and conv_out).
    let prefixes = unet.layer_prefixes();
    let mut per_layer = vec![0u64; prefixes.len()];
    let single = dir.single_file().is_some();
    let mut ldm_blocks: std::collections::HashMap<String, u64> = Default::default();
    let mut largest_tensor = 0;
    for (name, _, n) in dir.weight_entries("unet", "diffusion_pytorch_model")?.1 {
        largest_tensor = largest_tensor.max(n);
        if single {
            // LDM names: one input/output block is a resnet and its attention, about the
            // layers the streamed UNet loads one at a time.
            let block: Vec<&str> = name.splitn(3, '.').take(2).collect();
            *ldm_blocks.entry(block.join(".")).or_default() += n;
            continue;
        }
        let layer = (0..prefixes.len())
            .filter(|&i| name.starts_with(&format!("{}.", prefixes[i])) || prefixes[i].is_empty())
            .max_by_key(|&i| prefixes[i].len())
            .unwrap_or(0);
        per_layer[layer] += n;
    }
    let (mut vae_encoder, mut vae_decoder) = (0, 0);
    per_layer.extend(ldm_blocks.into_values());
    for (name, _, n) in dir.weight_entries("vae", "diffusion_pytorch_model")?.1 {
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
            unet_largest_tensor_params: largest_tensor,
            unet_channels: unet.block_out_channels[0],
            unet_heads: unet.heads(0),
            vae_encoder_params: vae_encoder,
            vae_decoder_params: vae_decoder,
            vae_channels: {
                let ch = dir.vae_config()?.block_out_channels;
                ch.get(1).or(ch.first()).copied().unwrap_or(0)
            },
            vae_top_channels: dir
                .vae_config()?
                .block_out_channels
                .first()
                .copied()
                .unwrap_or(0),
            vae_weight_bytes: rt.vae_f32_weight_dtype().size_in_bytes() as u64,
            vae_mid_channels: dir
                .vae_config()?
                .block_out_channels
                .last()
                .copied()
                .unwrap_or(0),
            attention_scores: tessera_nn::layers::attention::materialises_scores(rt),
            device_free: tessera_nn::device_memory::free_bytes(rt),
            device_used: device_in_use(rt)?,
        },
    })
}

/// The scheduler the settings name, else the one the model folder's config names (on Karras
/// sigmas where the config says `use_karras_sigmas`).
pub fn scheduler_kind(dir: &ModelDir, requested: Option<SchedulerKind>) -> Result<SchedulerKind> {
    if let Some(kind) = requested {
        return Ok(kind);
    }
    let config = dir.scheduler_config()?;
    let class = config.class_name.unwrap_or_default();
    let kind = SchedulerKind::from_class_name(&class).ok_or_else(|| {
        Error::input(
            dir.path("scheduler/scheduler_config.json"),
            Some("_class_name"),
            format!("scheduler {class:?} is not implemented"),
            format!(
                "choose one with --scheduler ({})",
                SchedulerKind::NAMES.join(", ")
            ),
        )
    })?;
    Ok(if config.use_karras_sigmas {
        kind.with_karras()
    } else {
        kind
    })
}

/// What a GPU holds before the render loads anything, once a first convolution and matrix
/// product have loaded their kernels and cuBLAS its workspace (0 on the CPU).
fn device_in_use(rt: &Runtime) -> Result<u64> {
    if rt.device.is_cpu() {
        return Ok(0);
    }
    let warm = || -> candle_core::Result<()> {
        let dtype = rt.conv_dtype();
        let x = candle_core::Tensor::zeros((1, 8, 8, 8), dtype, &rt.device)?;
        let k = candle_core::Tensor::zeros((8, 8, 3, 3), dtype, &rt.device)?;
        let y = x.conv2d(&k, 1, 1, 1, 1)?.flatten_from(2)?;
        y.matmul(&y.t()?)?
            .sum_all()?
            .to_dtype(candle_core::DType::F32)?
            .to_scalar::<f32>()?;
        Ok(())
    };
    warm()?;
    Ok(tessera_nn::device_memory::used_bytes(rt).unwrap_or(0))
}
