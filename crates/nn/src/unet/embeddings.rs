//! The timestep embedding: sinusoidal projection (computed in f32 as diffusers does) and MLP.

use crate::layers::linear::Linear;
use candle_core::{Device, Result, Tensor};
use candle_nn::VarBuilder;

/// diffusers' `get_timestep_embedding` for one timestep: (1, channels).
pub fn sinusoidal(
    t: f64,
    channels: usize,
    flip_sin_to_cos: bool,
    shift: f64,
    device: &Device,
) -> Result<Tensor> {
    let half = channels / 2;
    let freqs: Vec<f32> = (0..half)
        .map(|i| {
            let exponent = -(10000f32.ln()) * i as f32 / (half as f32 - shift as f32);
            (t as f32) * exponent.exp()
        })
        .collect();
    let (sin, cos): (Vec<f32>, Vec<f32>) = freqs.iter().map(|f| (f.sin(), f.cos())).unzip();
    let data = if flip_sin_to_cos {
        [cos, sin].concat()
    } else {
        [sin, cos].concat()
    };
    Tensor::from_vec(data, (1, 2 * half), device)
}

pub struct TimestepEmbedding {
    linear_1: Linear,
    linear_2: Linear,
}

impl TimestepEmbedding {
    pub fn new(vb: VarBuilder, channels: usize, dim: usize) -> Result<Self> {
        Ok(Self {
            linear_1: Linear::new(vb.pp("linear_1"), channels, dim, true)?,
            linear_2: Linear::new(vb.pp("linear_2"), dim, dim, true)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = self.linear_1.weight_dtype();
        let x = x.to_dtype(crate::runtime::compute_dtype(
            &self.linear_1.device(),
            dtype,
        ))?;
        self.linear_2
            .forward(&candle_nn::ops::silu(&self.linear_1.forward(&x)?)?)
    }
}

/// SDXL's added conditioning (`addition_embed_type = "text_time"`): the pooled text embedding
/// and the six micro-conditioning numbers `time_ids` (original size, crop offset, target size,
/// each `(height, width)`-ordered as diffusers stores them) as sinusoids, through
/// `add_embedding`; the result is added to the timestep embedding.
pub struct TextTimeEmbedding {
    add_embedding: TimestepEmbedding,
    time_dim: usize,
    flip_sin_to_cos: bool,
    shift: f64,
}

impl TextTimeEmbedding {
    pub fn new(
        vb: VarBuilder,
        (time_dim, input_dim): (usize, usize),
        out_dim: usize,
        flip_sin_to_cos: bool,
        shift: f64,
    ) -> Result<Self> {
        Ok(Self {
            add_embedding: TimestepEmbedding::new(vb.pp("add_embedding"), input_dim, out_dim)?,
            time_dim,
            flip_sin_to_cos,
            shift,
        })
    }

    /// `add_embedding(cat(text_embeds, sinusoids(time_ids)))`: (B, out_dim) for text
    /// embeddings (B, P) and `time_ids` (B, 6).
    pub fn forward(&self, text_embeds: &Tensor, time_ids: &Tensor) -> Result<Tensor> {
        let device = text_embeds.device();
        let ids = time_ids
            .to_dtype(candle_core::DType::F32)?
            .to_vec2::<f32>()?;
        let rows = ids
            .iter()
            .map(|row| {
                let parts = row
                    .iter()
                    .map(|&v| {
                        sinusoidal(
                            v as f64,
                            self.time_dim,
                            self.flip_sin_to_cos,
                            self.shift,
                            device,
                        )
                    })
                    .collect::<Result<Vec<_>>>()?;
                Tensor::cat(&parts, 1)
            })
            .collect::<Result<Vec<_>>>()?;
        let text = text_embeds.to_dtype(candle_core::DType::F32)?;
        let input = Tensor::cat(&[text, Tensor::cat(&rows, 0)?], 1)?;
        self.add_embedding.forward(&input)
    }
}
