//! The denoising UNet (diffusers' `UNet2DConditionModel` for SD 1.x / 2.x and SDXL), tessera's
//! own code:
//! candle-transformers' UNet uses the tanh GELU approximation in its GEGLU (diffusers uses the
//! exact erf GELU), has no bounded-memory attention, and cannot stream its weights.
//!
//! The network is a flat sequence of layers (head, each resnet, spatial transformer and
//! resampler of the down, mid and up blocks, tail) with the skip connections kept beside it.
//! Resident mode keeps every layer loaded; streaming mode reads each layer's weights right
//! before it runs and drops them after, so at most one layer's weights (about 190 MB for the
//! largest SD 1.5 resnet in f32) are ever in memory.

mod config;
mod embeddings;
mod program;
mod transformer;

pub use crate::layers::DEFAULT_ATTENTION_BUDGET;
pub use config::{PerBlock, UNetConfig};

use crate::layers::resnet::{ResnetBlock, ResnetConfig};
use crate::layers::{Conv2d, Fused, GroupNorm};
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use embeddings::{sinusoidal, TextTimeEmbedding, TimestepEmbedding};
use program::{Kind, LayerSpec};
use transformer::{Transformer2D, TransformerConfig};

/// One layer with its weights.
enum Layer {
    Head {
        conv_in: Conv2d,
        time: TimestepEmbedding,
        added: Option<TextTimeEmbedding>,
    },
    Resnet(ResnetBlock),
    Attention(Transformer2D),
    Resample(Conv2d),
    Tail {
        norm: GroupNorm,
        conv_out: Conv2d,
    },
}

impl Layer {
    /// What the layer is, for traces.
    fn name(&self) -> &'static str {
        match self {
            Layer::Head { .. } => "head",
            Layer::Resnet(_) => "resnet",
            Layer::Attention(_) => "attention",
            Layer::Resample(_) => "resample",
            Layer::Tail { .. } => "tail",
        }
    }
}

enum Weights {
    Resident(Vec<Layer>),
    Streaming(VarBuilder<'static>),
}

/// SDXL's added conditioning for one call: pooled text embeddings (B, P) and the
/// micro-conditioning `time_ids` (B, 6).
#[derive(Clone, Copy)]
pub struct AddedCond<'a> {
    pub text_embeds: &'a Tensor,
    pub time_ids: &'a Tensor,
}

pub struct UNet {
    pub config: UNetConfig,
    /// The dtype the UNet computes in (its inputs'): its weights' on a GPU, f32 on the CPU.
    pub dtype: candle_core::DType,
    layers: Vec<LayerSpec>,
    weights: Weights,
    /// Bytes of attention scores allowed alive at once.
    pub attention_budget: usize,
}

impl UNetConfig {
    fn resnet(&self) -> ResnetConfig {
        ResnetConfig {
            groups: self.norm_num_groups,
            eps: self.norm_eps,
            temb: Some(4 * self.block_out_channels[0]),
            output_scale: 1.0,
        }
    }

    fn transformer(&self, block: usize) -> TransformerConfig {
        TransformerConfig {
            heads: self.heads(block),
            layers: self.transformer_layers_per_block.get(block),
            context_dim: self.cross_attention_dim,
            groups: self.norm_num_groups,
            linear_projection: self.use_linear_projection,
        }
    }

    /// Load one layer's weights.
    fn build(&self, vb: &VarBuilder, spec: &LayerSpec) -> Result<Layer> {
        let ch = &self.block_out_channels;
        let vb = if spec.prefix.is_empty() {
            vb.clone()
        } else {
            vb.pp(&spec.prefix)
        };
        Ok(match &spec.kind {
            Kind::Head => Layer::Head {
                conv_in: Conv2d::same3(vb.pp("conv_in"), self.in_channels, ch[0])?,
                time: TimestepEmbedding::new(vb.pp("time_embedding"), ch[0], 4 * ch[0])?,
                added: self
                    .text_time_dims()
                    .map(|dims| {
                        let (flip, shift) = (self.flip_sin_to_cos, self.freq_shift);
                        TextTimeEmbedding::new(vb.clone(), dims, 4 * ch[0], flip, shift)
                    })
                    .transpose()?,
            },
            &Kind::Resnet {
                cin,
                cout,
                output_scale,
                ..
            } => {
                let rc = ResnetConfig {
                    output_scale,
                    ..self.resnet()
                };
                Layer::Resnet(ResnetBlock::new(vb, cin, cout, &rc)?)
            }
            &Kind::Attention { channels, block } => {
                Layer::Attention(Transformer2D::new(vb, channels, &self.transformer(block))?)
            }
            &Kind::Downsample { channels } => Layer::Resample(Conv2d::new(
                vb,
                channels,
                channels,
                3,
                2,
                self.downsample_padding,
            )?),
            &Kind::Upsample { channels, .. } => {
                Layer::Resample(Conv2d::same3(vb, channels, channels)?)
            }
            Kind::Tail => Layer::Tail {
                norm: GroupNorm::new(
                    vb.pp("conv_norm_out"),
                    ch[0],
                    self.norm_num_groups,
                    self.norm_eps,
                )?,
                conv_out: Conv2d::same3(vb.pp("conv_out"), ch[0], self.out_channels)?,
            },
        })
    }
}

impl UNet {
    /// All weights resident in memory.
    pub fn new(vb: VarBuilder, cfg: &UNetConfig) -> Result<Self> {
        let layers = cfg.layer_specs();
        let built = layers
            .iter()
            .map(|spec| cfg.build(&vb, spec))
            .collect::<Result<_>>()?;
        Ok(Self {
            config: cfg.clone(),
            dtype: crate::runtime::compute_dtype(vb.device(), vb.dtype()),
            layers,
            weights: Weights::Resident(built),
            attention_budget: DEFAULT_ATTENTION_BUDGET,
        })
    }

    /// Weights read from `vb` layer by layer during each forward and dropped after.
    pub fn new_streaming(vb: VarBuilder<'static>, cfg: &UNetConfig) -> Self {
        Self {
            config: cfg.clone(),
            dtype: crate::runtime::compute_dtype(vb.device(), vb.dtype()),
            layers: cfg.layer_specs(),
            weights: Weights::Streaming(vb),
            attention_budget: DEFAULT_ATTENTION_BUDGET,
        }
    }

    /// Noise prediction for `latents` (B,4,h,w) at `timestep` given text embeddings (B,77,C).
    pub fn forward(&self, latents: &Tensor, timestep: f64, text: &Tensor) -> Result<Tensor> {
        self.forward_added(latents, timestep, text, None)
    }

    /// Whether the UNet takes [`AddedCond`] (SDXL's `text_time`).
    pub fn takes_added_cond(&self) -> bool {
        self.config.text_time_dims().is_some()
    }

    /// [`UNet::forward`] with SDXL's added conditioning, which a `text_time` UNet requires and
    /// other UNets ignore.
    pub fn forward_added(
        &self,
        latents: &Tensor,
        timestep: f64,
        text: &Tensor,
        added_cond: Option<AddedCond>,
    ) -> Result<Tensor> {
        let (_, _, h, w) = latents.dims4()?;
        // Sample size at each level of the down path, which the up path restores.
        let mut sizes = vec![(h, w)];
        for _ in 1..self.config.block_out_channels.len() {
            let (ph, pw) = *sizes.last().expect("non-empty");
            sizes.push((ph.div_ceil(2), pw.div_ceil(2)));
        }
        let mut x = latents.clone();
        let mut temb = Tensor::zeros(1, latents.dtype(), latents.device())?;
        let mut skips = Vec::new();
        for (i, spec) in self.layers.iter().enumerate() {
            let loaded;
            let layer = match &self.weights {
                Weights::Resident(layers) => &layers[i],
                Weights::Streaming(vb) => {
                    loaded = self.config.build(vb, spec)?;
                    &loaded
                }
            };
            x = match (layer, &spec.kind) {
                (
                    Layer::Head {
                        conv_in,
                        time,
                        added,
                    },
                    _,
                ) => {
                    let c = &self.config;
                    let t = sinusoidal(
                        timestep,
                        c.block_out_channels[0],
                        c.flip_sin_to_cos,
                        c.freq_shift,
                        x.device(),
                    )?;
                    temb = time.forward(&t)?;
                    if let Some(added) = added {
                        let cond = added_cond.ok_or_else(|| {
                            candle_core::Error::Msg(
                                "this UNet (addition_embed_type \"text_time\") needs pooled text \
                                 embeddings and time_ids"
                                    .into(),
                            )
                        })?;
                        let aug = added.forward(cond.text_embeds, cond.time_ids)?;
                        temb = temb.broadcast_add(&aug)?;
                    }
                    temb = temb.to_dtype(x.dtype())?;
                    conv_in.forward(&x)?
                }
                (Layer::Resnet(block), Kind::Resnet { concat_skip, .. }) => {
                    if *concat_skip {
                        let skip = skips.pop().expect("one skip connection per up resnet");
                        block.forward_concat(&x, Some(&skip), Some(&temb))?
                    } else {
                        block.forward(&x, Some(&temb))?
                    }
                }
                (Layer::Attention(t), _) => t.forward(&x, text, self.attention_budget)?,
                (Layer::Resample(conv), Kind::Upsample { level, .. }) => {
                    let (th, tw) = sizes[*level];
                    let (_, _, h, w) = x.dims4()?;
                    match (th, tw) == (2 * h, 2 * w) {
                        true => conv.forward_fused(
                            &x,
                            Fused {
                                upsample: true,
                                ..Default::default()
                            },
                        )?,
                        // Odd sizes on the way down: nearest resampling to the exact size.
                        false => conv.forward(&x.upsample_nearest2d(th, tw)?)?,
                    }
                }
                (Layer::Resample(conv), _) => conv.forward(&x)?,
                (Layer::Tail { norm, conv_out }, _) => {
                    let pre = norm.affine(&x, None, true)?;
                    conv_out.forward_fused(
                        &x,
                        Fused {
                            pre: Some(&pre),
                            ..Default::default()
                        },
                    )?
                }
                (Layer::Resnet(_), _) => unreachable!("resnet layers have resnet specs"),
            };
            if spec.push_skip {
                skips.push(x.clone());
            }
            crate::device_memory::trace(x.device(), || {
                format!("UNet layer {i} ({})", layer.name())
            });
        }
        Ok(x)
    }
}
