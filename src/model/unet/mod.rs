//! The denoising UNet (diffusers' `UNet2DConditionModel` for SD 1.x / 2.x), tessera's own code:
//! candle-transformers' UNet uses the tanh GELU approximation in its GEGLU (diffusers uses the
//! exact erf GELU), has no bounded-memory attention, and cannot stream its weights.
//!
//! The network runs as a sequence of stages (head, each down block, mid, each up block, tail).
//! Resident mode keeps every stage loaded; streaming mode loads each stage from the
//! memory-mapped weights right before it runs and drops it after, so only one stage's weights
//! are ever in memory.

mod attention;
mod blocks;
mod config;
mod embeddings;
mod resnet;

pub use attention::{chunked_attention, DEFAULT_ATTENTION_BUDGET};
pub use config::{PerBlock, UNetConfig};

use attention::TransformerConfig;
use blocks::{BlockSpec, DownBlock, MidBlock, UpBlock};
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Conv2d, VarBuilder};
use embeddings::{group_norm, sinusoidal, F32Norm, TimestepEmbedding};
use resnet::{conv3, ResnetConfig};
use std::path::PathBuf;

/// One stage of the forward pass.
enum Stage {
    Head {
        conv_in: Conv2d,
        time: TimestepEmbedding,
    },
    Down(DownBlock),
    Mid(Box<MidBlock>),
    Up(UpBlock),
    Tail {
        norm: F32Norm<candle_nn::GroupNorm>,
        conv_out: Conv2d,
    },
}

enum Weights {
    Resident(Vec<Stage>),
    Streaming { path: PathBuf, dtype: DType },
}

pub struct UNet {
    pub config: UNetConfig,
    weights: Weights,
    /// Bytes of attention scores allowed alive at once.
    pub attention_budget: usize,
}

impl UNetConfig {
    fn resnet(&self) -> ResnetConfig {
        ResnetConfig {
            groups: self.norm_num_groups,
            eps: self.norm_eps,
            temb: 4 * self.block_out_channels[0],
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

    fn n_stages(&self) -> usize {
        2 * self.block_out_channels.len() + 3
    }

    /// Build stage `i` (0 head, 1..=n down, n+1 mid, n+2..=2n+1 up, 2n+2 tail).
    fn stage(&self, vb: &VarBuilder, i: usize) -> Result<Stage> {
        let ch = &self.block_out_channels;
        let n = ch.len();
        let rc = self.resnet();
        let cross = |b: usize| self.down_block_types[b] == "CrossAttnDownBlock2D";
        Ok(match i {
            0 => Stage::Head {
                conv_in: conv3(self.in_channels, ch[0], vb.pp("conv_in"))?,
                time: TimestepEmbedding::new(vb.pp("time_embedding"), ch[0], 4 * ch[0])?,
            },
            i if i <= n => {
                let b = i - 1;
                let spec = BlockSpec {
                    cin: if b == 0 { ch[0] } else { ch[b - 1] },
                    cout: ch[b],
                    layers: self.layers_per_block,
                    transformer: cross(b).then(|| self.transformer(b)),
                    resample: b + 1 < n,
                };
                Stage::Down(DownBlock::new(
                    vb.pp(format!("down_blocks.{b}")),
                    &spec,
                    &rc,
                    self.downsample_padding,
                )?)
            }
            i if i == n + 1 => {
                let rc = ResnetConfig {
                    output_scale: self.mid_block_scale_factor,
                    ..rc
                };
                let block =
                    MidBlock::new(vb.pp("mid_block"), ch[n - 1], &self.transformer(n - 1), &rc)?;
                Stage::Mid(Box::new(block))
            }
            i if i <= 2 * n + 1 => {
                let u = i - n - 2;
                let b = n - 1 - u; // the down block this up block mirrors
                let spec = BlockSpec {
                    cin: ch[b.saturating_sub(1)],
                    cout: ch[b],
                    layers: self.layers_per_block + 1,
                    transformer: cross(b).then(|| self.transformer(b)),
                    resample: u + 1 < n,
                };
                let prev = if u == 0 { ch[n - 1] } else { ch[b + 1] };
                let skips = self.skip_channels(b);
                Stage::Up(UpBlock::new(
                    vb.pp(format!("up_blocks.{u}")),
                    &spec,
                    prev,
                    &skips,
                    &rc,
                )?)
            }
            _ => Stage::Tail {
                norm: group_norm(
                    vb.pp("conv_norm_out"),
                    self.norm_num_groups,
                    ch[0],
                    self.norm_eps,
                )?,
                conv_out: conv3(ch[0], self.out_channels, vb.pp("conv_out"))?,
            },
        })
    }

    /// Channels of the skips consumed by the up block mirroring down block `b`, in pop order.
    fn skip_channels(&self, b: usize) -> Vec<usize> {
        let ch = &self.block_out_channels;
        // Skips are pushed: conv_in (ch0), then per down block `layers` outputs (+1 downsample).
        let mut pushed = vec![ch[0]];
        for (i, &c) in ch.iter().enumerate() {
            pushed.extend(std::iter::repeat_n(c, self.layers_per_block));
            if i + 1 < ch.len() {
                pushed.push(c);
            }
        }
        let per_up = self.layers_per_block + 1;
        let consumed_before = (ch.len() - 1 - b) * per_up;
        let end = pushed.len() - consumed_before;
        pushed[end - per_up..end].iter().rev().cloned().collect()
    }
}

impl UNet {
    /// All weights resident in memory.
    pub fn new(vb: VarBuilder, cfg: &UNetConfig) -> Result<Self> {
        let stages = (0..cfg.n_stages())
            .map(|i| cfg.stage(&vb, i))
            .collect::<Result<_>>()?;
        Ok(Self {
            config: cfg.clone(),
            weights: Weights::Resident(stages),
            attention_budget: DEFAULT_ATTENTION_BUDGET,
        })
    }

    /// Weights loaded stage by stage from `path` during each forward and dropped after.
    pub fn new_streaming(path: PathBuf, dtype: DType, cfg: &UNetConfig) -> Result<Self> {
        Ok(Self {
            config: cfg.clone(),
            weights: Weights::Streaming { path, dtype },
            attention_budget: DEFAULT_ATTENTION_BUDGET,
        })
    }

    /// Noise prediction for `latents` (B,4,h,w) at `timestep` given text embeddings (B,77,C).
    pub fn forward(&self, latents: &Tensor, timestep: f64, text: &Tensor) -> Result<Tensor> {
        let streaming_vb = match &self.weights {
            Weights::Streaming { path, dtype } => {
                // SAFETY: read-only mapping of a weights file that is not modified while we run.
                Some(unsafe { VarBuilder::from_mmaped_safetensors(&[path], *dtype, &Device::Cpu)? })
            }
            Weights::Resident(_) => None,
        };
        let n = self.config.block_out_channels.len();
        let (_, _, h, w) = latents.dims4()?;
        let mut sizes = vec![(h, w)];
        for _ in 1..n {
            let (ph, pw) = *sizes.last().expect("non-empty");
            sizes.push((ph.div_ceil(2), pw.div_ceil(2)));
        }
        let mut x = latents.clone();
        let mut temb = Tensor::zeros(1, latents.dtype(), latents.device())?;
        let mut skips = Vec::new();
        for i in 0..self.config.n_stages() {
            let built;
            let stage = match (&self.weights, &streaming_vb) {
                (Weights::Resident(stages), _) => &stages[i],
                (_, Some(vb)) => {
                    built = self.config.stage(vb, i)?;
                    &built
                }
                _ => unreachable!("streaming weights always have a var builder"),
            };
            x = match stage {
                Stage::Head { conv_in, time } => {
                    let c = &self.config;
                    let t = sinusoidal(
                        timestep,
                        c.block_out_channels[0],
                        c.flip_sin_to_cos,
                        c.freq_shift,
                        x.device(),
                    )?;
                    temb = time.forward(&t)?.to_dtype(x.dtype())?;
                    let x = conv_in.forward(&x)?;
                    skips.push(x.clone());
                    x
                }
                Stage::Down(block) => {
                    let (x, s) = block.forward(&x, &temb, text, self.attention_budget)?;
                    skips.extend(s);
                    x
                }
                Stage::Mid(block) => block.forward(&x, &temb, text, self.attention_budget)?,
                Stage::Up(block) => {
                    let u = i - n - 2;
                    let target = (u + 1 < n).then(|| sizes[n - 2 - u]);
                    block.forward(&x, &mut skips, &temb, text, self.attention_budget, target)?
                }
                Stage::Tail { norm, conv_out } => {
                    conv_out.forward(&candle_nn::ops::silu(&norm.forward(&x)?)?)?
                }
            };
        }
        Ok(x)
    }
}
