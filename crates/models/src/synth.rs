//! `tessera model synth`: a diffusers model folder with random weights, for tests and for
//! measuring full-size architectures without downloading weights.
//!
//! The architectures are built by tessera's own model code over a shape-recording weight source, so the
//! written key names and shapes are exactly what the loader reads. Weights are drawn from the
//! portable seeded noise (normal / sqrt(fan_in); norms 1; biases N(0, 0.02)), so a seed always
//! gives the same folder.

use crate::record::record;
use crate::ModelDir;
use candle_core::{DType, Shape, Tensor};
use candle_nn::VarBuilder;
use serde_json::{json, Value};
use std::path::Path;
use tessera_core::{Error, Result};
use tessera_diffusion::noise::SeededNoise;
use tessera_nn::config::read_json;
use tessera_nn::runtime::host;
use tessera_nn::weights::save_tensors;
use tessera_nn::{clip, unet, vae};

pub const ARCHES: &[&str] = &["tiny", "sd15", "sd21", "sdxl"];

pub(crate) struct Arch {
    pub(crate) unet: Value,
    pub(crate) vae: Value,
    pub(crate) text_encoder: Value,
    /// SDXL's second encoder (`CLIPTextModelWithProjection`, its tokenizer pads with `!`).
    pub(crate) text_encoder_2: Option<Value>,
    scheduler: Value,
    pad_token: &'static str,
}

pub(crate) fn arch(name: &str) -> Result<Arch> {
    let read = |rel: &str| -> Result<Value> { read_json(&ModelDir::bundled_tiny().join(rel)) };
    let sd_vae = |size: usize| {
        json!({"_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
            "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
            "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
            "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
            "norm_num_groups": 32, "sample_size": size, "scaling_factor": 0.18215, "force_upcast": true})
    };
    let sd_unet = |heads: Value, cross: usize, linear: bool, size: usize| {
        json!({"_class_name": "UNet2DConditionModel", "act_fn": "silu", "attention_head_dim": heads,
            "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": false,
            "cross_attention_dim": cross,
            "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
            "downsample_padding": 1, "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4, "out_channels": 4,
            "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-5, "norm_num_groups": 32,
            "sample_size": size, "use_linear_projection": linear})
    };
    let clip = |hidden: usize,
                inter: usize,
                layers: usize,
                heads: usize,
                act: &str,
                proj: usize| {
        json!({"architectures": ["CLIPTextModel"], "model_type": "clip_text_model", "hidden_size": hidden,
            "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": heads,
            "hidden_act": act, "projection_dim": proj, "max_position_embeddings": 77,
            "vocab_size": 49408, "layer_norm_eps": 1e-5})
    };
    let sched = |prediction: &str| {
        json!({"_class_name": "DDIMScheduler", "beta_start": 0.00085, "beta_end": 0.012,
            "beta_schedule": "scaled_linear", "clip_sample": false, "num_train_timesteps": 1000,
            "prediction_type": prediction, "set_alpha_to_one": false, "steps_offset": 1,
            "timestep_spacing": "leading"})
    };
    match name {
        "tiny" => Ok(Arch {
            unet: read("unet/config.json")?,
            vae: read("vae/config.json")?,
            text_encoder: read("text_encoder/config.json")?,
            text_encoder_2: None,
            scheduler: read("scheduler/scheduler_config.json")?,
            pad_token: "<|endoftext|>",
        }),
        "sd15" => Ok(Arch {
            unet: sd_unet(json!(8), 768, false, 64),
            vae: sd_vae(512),
            text_encoder: clip(768, 3072, 12, 12, "quick_gelu", 768),
            text_encoder_2: None,
            scheduler: sched("epsilon"),
            pad_token: "<|endoftext|>",
        }),
        "sd21" => Ok(Arch {
            unet: sd_unet(json!([5, 10, 20, 20]), 1024, true, 96),
            vae: sd_vae(768),
            text_encoder: clip(1024, 4096, 23, 16, "gelu", 512),
            text_encoder_2: None,
            scheduler: sched("v_prediction"),
            pad_token: "!",
        }),
        // stable-diffusion-xl-base-1.0's configs (the architecture fields).
        "sdxl" => Ok(Arch {
            unet: {
                let mut u = sd_unet(json!([5, 10, 20]), 2048, true, 128);
                u["block_out_channels"] = json!([320, 640, 1280]);
                u["down_block_types"] = json!([
                    "DownBlock2D",
                    "CrossAttnDownBlock2D",
                    "CrossAttnDownBlock2D"
                ]);
                u["up_block_types"] =
                    json!(["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]);
                u["transformer_layers_per_block"] = json!([1, 2, 10]);
                u["addition_embed_type"] = json!("text_time");
                u["addition_time_embed_dim"] = json!(256);
                u["projection_class_embeddings_input_dim"] = json!(2816);
                u
            },
            vae: {
                let mut v = sd_vae(1024);
                v["scaling_factor"] = json!(0.13025);
                v
            },
            text_encoder: clip(768, 3072, 12, 12, "quick_gelu", 768),
            text_encoder_2: Some({
                let mut c = clip(1280, 5120, 32, 20, "gelu", 1280);
                c["architectures"] = json!(["CLIPTextModelWithProjection"]);
                c
            }),
            scheduler: json!({"_class_name": "EulerDiscreteScheduler", "beta_start": 0.00085,
                "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
                "prediction_type": "epsilon", "steps_offset": 1, "timestep_spacing": "leading",
                "interpolation_type": "linear"}),
            pad_token: "<|endoftext|>",
        }),
        other => Err(Error::input(
            "--arch",
            None,
            format!("unknown architecture {other:?}"),
            format!("use one of: {}", ARCHES.join(", ")),
        )),
    }
}

/// Portable seeded values for every recorded weight, by name.
fn seeded_weights(
    shapes: &[(String, Shape)],
    seed: u64,
    dtype: DType,
) -> Result<Vec<(String, Tensor)>> {
    let mut rng = SeededNoise::new(seed);
    shapes
        .iter()
        .map(|(name, shape)| {
            let dims = shape.dims();
            let t = if dims.len() == 1 && name.ends_with(".weight") {
                Tensor::ones(dims, DType::F32, &host())?
            } else {
                let scale = if dims.len() == 1 {
                    0.02
                } else {
                    1.0 / (dims[1..].iter().product::<usize>() as f64).sqrt()
                };
                let values: Vec<f32> = (0..shape.elem_count())
                    .map(|_| (rng.next_normal() * scale) as f32)
                    .collect();
                Tensor::from_vec(values, dims, &host())?
            };
            Ok((name.clone(), t.to_dtype(dtype)?))
        })
        .collect()
}

fn write_component(
    dir: &Path,
    file: &str,
    config_name: &str,
    config: &Value,
    seed: u64,
    dtype: DType,
    build: impl FnOnce(VarBuilder) -> Result<()>,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir.display().to_string(), e))?;
    let weights = seeded_weights(&record(build)?, seed, dtype)?;
    let refs: Vec<(&str, &Tensor)> = weights.iter().map(|(k, t)| (k.as_str(), t)).collect();
    save_tensors(&dir.join(file), &refs)?;
    write_json(&dir.join(config_name), config)
}

fn parse<T: serde::de::DeserializeOwned>(config: &Value, arch: &str) -> Result<T> {
    serde_json::from_value(config.clone())
        .map_err(|e| Error::Other(format!("internal config of {arch} does not parse: {e}")))
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("serialisable");
    std::fs::write(path, text).map_err(|e| Error::io(path.display().to_string(), e))
}

/// Parameters per component (`unet`, `vae`, `text_encoder`, `text_encoder_2`) of an
/// architecture, counted from the weights tessera's model code asks for (nothing allocated).
pub fn parameter_counts(name: &str) -> Result<Vec<(&'static str, u64)>> {
    let a = arch(name)?;
    let count = |shapes: Vec<(String, Shape)>| -> u64 {
        shapes.iter().map(|(_, s)| s.elem_count() as u64).sum()
    };
    let unet_cfg: unet::UNetConfig = parse(&a.unet, name)?;
    let vae_cfg: vae::VaeConfig = parse(&a.vae, name)?;
    let clip_cfg: clip::ClipTextConfig = parse(&a.text_encoder, name)?;
    let mut out = vec![
        (
            "unet",
            count(record(|vb| Ok(unet::UNet::new(vb, &unet_cfg).map(drop)?))?),
        ),
        (
            "vae",
            count(record(|vb| {
                Ok(vae::AutoencoderKl::new(vb, &vae_cfg).map(drop)?)
            })?),
        ),
        (
            "text_encoder",
            count(record(|vb| {
                Ok(clip::ClipTextModel::new(vb, &clip_cfg).map(drop)?)
            })?),
        ),
    ];
    if let Some(te2) = &a.text_encoder_2 {
        let cfg: clip::ClipTextConfig = parse(te2, name)?;
        let shapes = record(|vb| Ok(clip::ClipTextModelWithProjection::new(vb, &cfg).map(drop)?))?;
        out.push(("text_encoder_2", count(shapes)));
    }
    Ok(out)
}

/// Write a random-weight model folder of architecture `name` to `out` (atomically: built in a
/// sibling temporary folder, then renamed).
pub fn synthesize(name: &str, out: &Path, seed: u64, dtype: &str) -> Result<()> {
    let a = arch(name)?;
    let dtype = match dtype {
        "f32" => DType::F32,
        "f16" => DType::F16,
        other => {
            return Err(Error::input(
                "--dtype",
                None,
                format!("{other:?}"),
                "use f32 or f16",
            ))
        }
    };
    if out.exists() {
        return Err(Error::input(
            out,
            None,
            "already exists",
            "choose a new --out folder",
        ));
    }
    let tmp = out.with_extension("synth-tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    let unet_cfg: unet::UNetConfig = parse(&a.unet, name)?;
    let vae_cfg: vae::VaeConfig = parse(&a.vae, name)?;
    let clip_cfg: clip::ClipTextConfig = parse(&a.text_encoder, name)?;
    let file = "diffusion_pytorch_model.safetensors";
    write_component(
        &tmp.join("unet"),
        file,
        "config.json",
        &a.unet,
        seed,
        dtype,
        |vb| {
            unet::UNet::new(vb, &unet_cfg)
                .map(drop)
                .map_err(Error::from)
        },
    )?;
    write_component(
        &tmp.join("vae"),
        file,
        "config.json",
        &a.vae,
        seed + 1,
        dtype,
        |vb| {
            vae::AutoencoderKl::new(vb, &vae_cfg)
                .map(drop)
                .map_err(Error::from)
        },
    )?;
    write_component(
        &tmp.join("text_encoder"),
        "model.safetensors",
        "config.json",
        &a.text_encoder,
        seed + 2,
        dtype,
        |vb| {
            clip::ClipTextModel::new(vb, &clip_cfg)
                .map(drop)
                .map_err(Error::from)
        },
    )?;
    std::fs::create_dir_all(tmp.join("scheduler")).map_err(|e| Error::io("scheduler", e))?;
    write_json(&tmp.join("scheduler/scheduler_config.json"), &a.scheduler)?;
    copy_tokenizer(&tmp.join("tokenizer"), a.pad_token)?;
    let mut index = json!({"_class_name": "StableDiffusionPipeline",
        "scheduler": ["diffusers", a.scheduler["_class_name"]],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]});
    if let Some(te2) = &a.text_encoder_2 {
        let cfg: clip::ClipTextConfig = parse(te2, name)?;
        write_component(
            &tmp.join("text_encoder_2"),
            "model.safetensors",
            "config.json",
            te2,
            seed + 3,
            dtype,
            |vb| {
                clip::ClipTextModelWithProjection::new(vb, &cfg)
                    .map(drop)
                    .map_err(Error::from)
            },
        )?;
        copy_tokenizer(&tmp.join("tokenizer_2"), "!")?;
        index["_class_name"] = json!("StableDiffusionXLPipeline");
        index["force_zeros_for_empty_prompt"] = json!(true);
        index["text_encoder_2"] = json!(["transformers", "CLIPTextModelWithProjection"]);
        index["tokenizer_2"] = json!(["transformers", "CLIPTokenizer"]);
    }
    write_json(&tmp.join("model_index.json"), &index)?;
    std::fs::rename(&tmp, out).map_err(|e| Error::io(format!("renaming to {}", out.display()), e))
}

/// The real CLIP BPE tokenizer from the bundled model, with the architecture's pad token.
fn copy_tokenizer(dir: &Path, pad_token: &str) -> Result<()> {
    let src = ModelDir::bundled_tiny().join("tokenizer");
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir.display().to_string(), e))?;
    for f in [
        "tokenizer.json",
        "vocab.json",
        "merges.txt",
        "special_tokens_map.json",
    ] {
        std::fs::copy(src.join(f), dir.join(f))
            .map_err(|e| Error::io(format!("copying {f}"), e))?;
    }
    let mut cfg: Value = read_json(&src.join("tokenizer_config.json"))?;
    cfg["pad_token"] = json!(pad_token);
    write_json(&dir.join("tokenizer_config.json"), &cfg)
}
