//! Single-file checkpoints in the original LDM / A1111 layout (`model.diffusion_model.*`,
//! `first_stage_model.*`, `cond_stage_model.transformer.*`), read as they are: the networks ask
//! for diffusers names, and this layer says which LDM tensor holds each (and reshapes the VAE's
//! 1x1-convolution attention weights into the linear weights diffusers has).

use crate::weights::WeightFile;
use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use std::sync::Arc;

/// Which model of the checkpoint a source serves, with what its key map needs to know.
#[derive(Debug, Clone)]
pub enum Part {
    /// `layers_per_block` and, per up block, whether it has attentions (the upsampler's index
    /// inside its LDM output block depends on it).
    Unet {
        layers_per_block: usize,
        up_attention: Vec<bool>,
    },
    /// The number of resolution levels (LDM numbers decoder levels bottom-up).
    Vae { levels: usize },
    /// A CLIP text encoder stored in the Hugging Face layout under this prefix
    /// (SD 1.x: `cond_stage_model.transformer.`).
    TextEncoder { prefix: String },
    /// An OpenCLIP text encoder under this prefix (SD 2.x: `cond_stage_model.model.`), whose
    /// attention keeps q, k, v in one `in_proj` tensor.
    OpenClip { prefix: String },
}

pub const UNET_PREFIX: &str = "model.diffusion_model.";
pub const VAE_PREFIX: &str = "first_stage_model.";
pub const SD1_TEXT_PREFIX: &str = "cond_stage_model.transformer.";
pub const SD2_TEXT_PREFIX: &str = "cond_stage_model.model.";
/// SDXL's two text encoders: CLIP-L in the Hugging Face layout, OpenCLIP-bigG.
pub const SDXL_TEXT_PREFIX: &str = "conditioner.embedders.0.transformer.";
pub const SDXL_TEXT2_PREFIX: &str = "conditioner.embedders.1.model.";

/// Where a diffusers tensor lives: a checkpoint key, and for q/k/v kept in one OpenCLIP
/// `in_proj` tensor, which third of its first dimension.
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    pub name: String,
    pub third: Option<usize>,
    /// OpenCLIP's `text_projection` is stored as x·P, diffusers' as a linear weight Pᵀ.
    pub transpose: bool,
}

/// The OpenCLIP key of a diffusers CLIP text-encoder tensor name.
pub fn open_clip_key(name: &str) -> Option<Key> {
    let plain = |name: String| {
        Some(Key {
            name,
            third: None,
            transpose: false,
        })
    };
    if name == "text_projection.weight" {
        return Some(Key {
            name: "text_projection".into(),
            third: None,
            transpose: true,
        });
    }
    let name = name.strip_prefix("text_model.")?;
    match name {
        "embeddings.token_embedding.weight" => return plain("token_embedding.weight".into()),
        "embeddings.position_embedding.weight" => return plain("positional_embedding".into()),
        _ => {}
    }
    if let Some(t) = name.strip_prefix("final_layer_norm.") {
        return plain(format!("ln_final.{t}"));
    }
    let (i, t) = index_after(name, "encoder.layers")?;
    let block = format!("transformer.resblocks.{i}");
    for (j, q) in ["q_proj.", "k_proj.", "v_proj."].iter().enumerate() {
        if let Some(kind) = t.strip_prefix("self_attn.").and_then(|a| a.strip_prefix(q)) {
            return Some(Key {
                name: format!("{block}.attn.in_proj_{kind}"),
                third: Some(j),
                transpose: false,
            });
        }
    }
    let map = [
        ("self_attn.out_proj.", "attn.out_proj."),
        ("layer_norm1.", "ln_1."),
        ("layer_norm2.", "ln_2."),
        ("mlp.fc1.", "mlp.c_fc."),
        ("mlp.fc2.", "mlp.c_proj."),
    ];
    let (d, l) = map.iter().find(|(d, _)| t.starts_with(d))?;
    plain(format!("{block}.{l}{}", &t[d.len()..]))
}

/// `a.<i>.b` → (`i`, `b`) for `name` starting with `a.`.
fn index_after<'a>(name: &'a str, a: &str) -> Option<(usize, &'a str)> {
    let rest = name.strip_prefix(a)?.strip_prefix('.')?;
    let (i, tail) = rest.split_once('.')?;
    Some((i.parse().ok()?, tail))
}

fn unet_resnet(tail: &str) -> String {
    let map = [
        ("norm1.", "in_layers.0."),
        ("conv1.", "in_layers.2."),
        ("time_emb_proj.", "emb_layers.1."),
        ("norm2.", "out_layers.0."),
        ("conv2.", "out_layers.3."),
        ("conv_shortcut.", "skip_connection."),
    ];
    for (d, l) in map {
        if let Some(rest) = tail.strip_prefix(d) {
            return format!("{l}{rest}");
        }
    }
    tail.to_string()
}

/// The LDM key of a diffusers UNet tensor name.
pub fn unet_key(name: &str, layers_per_block: usize, up_attention: &[bool]) -> Option<String> {
    let per = layers_per_block + 1;
    let simple = [
        ("time_embedding.linear_1.", "time_embed.0."),
        ("time_embedding.linear_2.", "time_embed.2."),
        ("add_embedding.linear_1.", "label_emb.0.0."),
        ("add_embedding.linear_2.", "label_emb.0.2."),
        ("conv_in.", "input_blocks.0.0."),
        ("conv_norm_out.", "out.0."),
        ("conv_out.", "out.2."),
    ];
    let key = if let Some((d, l)) = simple.iter().find(|(d, _)| name.starts_with(d)) {
        format!("{l}{}", &name[d.len()..])
    } else if let Some((i, tail)) = index_after(name, "down_blocks") {
        if let Some((j, t)) = index_after(tail, "resnets") {
            format!("input_blocks.{}.0.{}", 1 + i * per + j, unet_resnet(t))
        } else if let Some((j, t)) = index_after(tail, "attentions") {
            format!("input_blocks.{}.1.{t}", 1 + i * per + j)
        } else {
            let t = tail.strip_prefix("downsamplers.0.conv.")?;
            format!("input_blocks.{}.0.op.{t}", (i + 1) * per)
        }
    } else if let Some(tail) = name.strip_prefix("mid_block.") {
        if let Some((j, t)) = index_after(tail, "resnets") {
            format!("middle_block.{}.{}", 2 * j, unet_resnet(t))
        } else {
            let t = tail.strip_prefix("attentions.0.")?;
            format!("middle_block.1.{t}")
        }
    } else if let Some((i, tail)) = index_after(name, "up_blocks") {
        if let Some((j, t)) = index_after(tail, "resnets") {
            format!("output_blocks.{}.0.{}", i * per + j, unet_resnet(t))
        } else if let Some((j, t)) = index_after(tail, "attentions") {
            format!("output_blocks.{}.1.{t}", i * per + j)
        } else {
            let t = tail.strip_prefix("upsamplers.0.conv.")?;
            let slot = if *up_attention.get(i)? { 2 } else { 1 };
            format!(
                "output_blocks.{}.{slot}.conv.{t}",
                i * per + layers_per_block
            )
        }
    } else {
        return None;
    };
    Some(format!("{UNET_PREFIX}{key}"))
}

fn vae_resnet(tail: &str) -> String {
    match tail.strip_prefix("conv_shortcut.") {
        Some(rest) => format!("nin_shortcut.{rest}"),
        None => tail.to_string(),
    }
}

fn vae_mid(tail: &str) -> Option<String> {
    if let Some((j, t)) = index_after(tail, "resnets") {
        return Some(format!("mid.block_{}.{}", j + 1, vae_resnet(t)));
    }
    let t = tail.strip_prefix("attentions.0.")?;
    let map = [
        ("group_norm.", "norm."),
        ("to_q.", "q."),
        ("to_k.", "k."),
        ("to_v.", "v."),
        ("to_out.0.", "proj_out."),
    ];
    let (d, l) = map.iter().find(|(d, _)| t.starts_with(d))?;
    Some(format!("mid.attn_1.{l}{}", &t[d.len()..]))
}

/// The LDM key of a diffusers VAE tensor name.
pub fn vae_key(name: &str, levels: usize) -> Option<String> {
    let key = if let Some(e) = name.strip_prefix("encoder.") {
        let inner = if let Some((i, tail)) = index_after(e, "down_blocks") {
            if let Some((j, t)) = index_after(tail, "resnets") {
                format!("down.{i}.block.{j}.{}", vae_resnet(t))
            } else {
                format!(
                    "down.{i}.downsample.conv.{}",
                    tail.strip_prefix("downsamplers.0.conv.")?
                )
            }
        } else if let Some(tail) = e.strip_prefix("mid_block.") {
            vae_mid(tail)?
        } else if let Some(t) = e.strip_prefix("conv_norm_out.") {
            format!("norm_out.{t}")
        } else {
            e.to_string()
        };
        format!("encoder.{inner}")
    } else if let Some(d) = name.strip_prefix("decoder.") {
        let inner = if let Some((i, tail)) = index_after(d, "up_blocks") {
            let level = levels.checked_sub(1 + i)?;
            if let Some((j, t)) = index_after(tail, "resnets") {
                format!("up.{level}.block.{j}.{}", vae_resnet(t))
            } else {
                format!(
                    "up.{level}.upsample.conv.{}",
                    tail.strip_prefix("upsamplers.0.conv.")?
                )
            }
        } else if let Some(tail) = d.strip_prefix("mid_block.") {
            vae_mid(tail)?
        } else if let Some(t) = d.strip_prefix("conv_norm_out.") {
            format!("norm_out.{t}")
        } else {
            d.to_string()
        };
        format!("decoder.{inner}")
    } else {
        name.to_string()
    };
    Some(format!("{VAE_PREFIX}{key}"))
}

impl Part {
    /// The checkpoint key holding the diffusers tensor `name`.
    pub fn key(&self, name: &str) -> Option<Key> {
        let plain = |name: Option<String>| {
            name.map(|name| Key {
                name,
                third: None,
                transpose: false,
            })
        };
        match self {
            Part::Unet {
                layers_per_block,
                up_attention,
            } => plain(unet_key(name, *layers_per_block, up_attention)),
            Part::Vae { levels } => plain(vae_key(name, *levels)),
            Part::TextEncoder { prefix } => plain(Some(format!("{prefix}{name}"))),
            Part::OpenClip { prefix } => open_clip_key(name).map(|k| Key {
                name: format!("{prefix}{}", k.name),
                ..k
            }),
        }
    }
}

/// One model of a single-file checkpoint as a weight source under diffusers names.
pub struct LdmSource {
    file: Arc<WeightFile>,
    part: Part,
}

impl LdmSource {
    pub fn new(file: Arc<WeightFile>, part: Part) -> Self {
        Self { file, part }
    }

    /// The tensor the diffusers name `name` stands for, as stored.
    fn read(&self, name: &str, dtype: DType, dev: &Device) -> Result<(String, Tensor)> {
        let key = self.part.key(name).ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "{}: no LDM key for the diffusers tensor {name}",
                self.file.path().display()
            ))
        })?;
        let t = self.file.load(&key.name, dtype, dev)?;
        let t = match key.third {
            Some(j) => {
                let n = t.dim(0)? / 3;
                t.narrow(0, j * n, n)?.contiguous()?
            }
            None => t,
        };
        let t = if key.transpose {
            t.t()?.contiguous()?
        } else {
            t
        };
        Ok((key.name, t))
    }
}

impl SimpleBackend for LdmSource {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        let (key, t) = self.read(name, dtype, dev)?;
        if t.shape() == &s {
            return Ok(t);
        }
        // LDM stores the VAE attention projections as 1x1 convolutions, [c, c, 1, 1].
        let squeezed: Vec<usize> = t.dims().iter().copied().filter(|&d| d != 1).collect();
        let want: Vec<usize> = s.dims().iter().copied().filter(|&d| d != 1).collect();
        if squeezed == want {
            return t.reshape(s);
        }
        Err(candle_core::Error::UnexpectedShape {
            msg: format!("{}: shape mismatch for {key}", self.file.path().display()),
            expected: s,
            got: t.shape().clone(),
        })
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        Ok(self.read(name, dtype, dev)?.1)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.part
            .key(name)
            .is_some_and(|k| self.file.contains(&k.name))
    }
}

#[cfg(test)]
#[path = "ldm_tests.rs"]
mod tests;
