//! The denoising UNet (diffusers' `UNet2DConditionModel` for SD 1.x / 2.x), tessera's own code:
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
mod transformer;

pub use crate::layers::DEFAULT_ATTENTION_BUDGET;
pub use config::{PerBlock, UNetConfig};

use crate::layers::resnet::{ResnetBlock, ResnetConfig};
use crate::layers::{Conv2d, Fused, GroupNorm};
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use embeddings::{sinusoidal, TimestepEmbedding};
use transformer::{Transformer2D, TransformerConfig};

/// What one layer is, without its weights: enough to build it and to keep the skips.
#[derive(Debug, Clone)]
struct LayerSpec {
    kind: Kind,
    /// Weight name prefix, e.g. `down_blocks.1.attentions.0`.
    prefix: String,
    /// Whether the output is pushed as a skip connection (down path).
    push_skip: bool,
}

#[derive(Debug, Clone)]
enum Kind {
    Head,
    /// `concat_skip`: the input is the running sample concatenated with a popped skip (up path).
    Resnet {
        cin: usize,
        cout: usize,
        concat_skip: bool,
        output_scale: f64,
    },
    Attention {
        channels: usize,
        block: usize,
    },
    Downsample {
        channels: usize,
    },
    /// Upsamples to the size the down path had at `level`.
    Upsample {
        channels: usize,
        level: usize,
    },
    Tail,
}

/// One layer with its weights.
enum Layer {
    Head {
        conv_in: Conv2d,
        time: TimestepEmbedding,
    },
    Resnet(ResnetBlock),
    Attention(Transformer2D),
    Resample(Conv2d),
    Tail {
        norm: GroupNorm,
        conv_out: Conv2d,
    },
}

enum Weights {
    Resident(Vec<Layer>),
    Streaming(VarBuilder<'static>),
}

pub struct UNet {
    pub config: UNetConfig,
    /// The dtype the weights (and so the inputs) are in.
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

    /// Weight-name prefixes of the forward pass's layers, in order ("" is the head: conv_in
    /// and the time embedding).
    pub fn layer_prefixes(&self) -> Vec<String> {
        self.layer_specs().into_iter().map(|l| l.prefix).collect()
    }

    /// The layer sequence of the forward pass, in order.
    fn layer_specs(&self) -> Vec<LayerSpec> {
        let ch = &self.block_out_channels;
        let n = ch.len();
        let cross = |b: usize| self.down_block_types[b] == "CrossAttnDownBlock2D";
        let mut out = Vec::new();
        let mut push = |kind, prefix: String, push_skip| {
            out.push(LayerSpec {
                kind,
                prefix,
                push_skip,
            })
        };
        push(Kind::Head, String::new(), true);
        let mut skip_channels = vec![ch[0]];
        for b in 0..n {
            let p = format!("down_blocks.{b}");
            for i in 0..self.layers_per_block {
                let cin = if i == 0 {
                    ch[b.saturating_sub(1)]
                } else {
                    ch[b]
                };
                let resnet = Kind::Resnet {
                    cin,
                    cout: ch[b],
                    concat_skip: false,
                    output_scale: 1.0,
                };
                push(resnet, format!("{p}.resnets.{i}"), !cross(b));
                if cross(b) {
                    let attn = Kind::Attention {
                        channels: ch[b],
                        block: b,
                    };
                    push(attn, format!("{p}.attentions.{i}"), true);
                }
                skip_channels.push(ch[b]);
            }
            if b + 1 < n {
                let down = Kind::Downsample { channels: ch[b] };
                push(down, format!("{p}.downsamplers.0.conv"), true);
                skip_channels.push(ch[b]);
            }
        }
        let top = ch[n - 1];
        let mid_resnet = |i: usize| {
            let kind = Kind::Resnet {
                cin: top,
                cout: top,
                concat_skip: false,
                output_scale: self.mid_block_scale_factor,
            };
            (kind, format!("mid_block.resnets.{i}"), false)
        };
        let (k, p, s) = mid_resnet(0);
        push(k, p, s);
        let attn = Kind::Attention {
            channels: top,
            block: n - 1,
        };
        push(attn, "mid_block.attentions.0".into(), false);
        let (k, p, s) = mid_resnet(1);
        push(k, p, s);
        let mut prev = top;
        for u in 0..n {
            let b = n - 1 - u; // the down block this up block mirrors
            let p = format!("up_blocks.{u}");
            for i in 0..=self.layers_per_block {
                let skip = skip_channels.pop().expect("one skip per up resnet");
                let resnet = Kind::Resnet {
                    cin: prev + skip,
                    cout: ch[b],
                    concat_skip: true,
                    output_scale: 1.0,
                };
                push(resnet, format!("{p}.resnets.{i}"), false);
                if cross(b) {
                    let attn = Kind::Attention {
                        channels: ch[b],
                        block: b,
                    };
                    push(attn, format!("{p}.attentions.{i}"), false);
                }
                prev = ch[b];
            }
            if u + 1 < n {
                let up = Kind::Upsample {
                    channels: ch[b],
                    level: n - 2 - u,
                };
                push(up, format!("{p}.upsamplers.0.conv"), false);
            }
        }
        push(Kind::Tail, String::new(), false);
        out
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
            dtype: vb.dtype(),
            layers,
            weights: Weights::Resident(built),
            attention_budget: DEFAULT_ATTENTION_BUDGET,
        })
    }

    /// Weights read from `vb` layer by layer during each forward and dropped after.
    pub fn new_streaming(vb: VarBuilder<'static>, cfg: &UNetConfig) -> Self {
        Self {
            config: cfg.clone(),
            dtype: vb.dtype(),
            layers: cfg.layer_specs(),
            weights: Weights::Streaming(vb),
            attention_budget: DEFAULT_ATTENTION_BUDGET,
        }
    }

    /// Noise prediction for `latents` (B,4,h,w) at `timestep` given text embeddings (B,77,C).
    pub fn forward(&self, latents: &Tensor, timestep: f64, text: &Tensor) -> Result<Tensor> {
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
                (Layer::Head { conv_in, time }, _) => {
                    let c = &self.config;
                    let t = sinusoidal(
                        timestep,
                        c.block_out_channels[0],
                        c.flip_sin_to_cos,
                        c.freq_shift,
                        x.device(),
                    )?;
                    temb = time.forward(&t)?.to_dtype(x.dtype())?;
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
        }
        Ok(x)
    }
}
