//! The CLIP text encoders: transformers' `CLIPTextModel` (token + position embeddings, pre-norm
//! transformer layers with a causal mask, final norm) and `CLIPTextModelWithProjection` (SDXL's
//! second encoder: the same plus a pooled, projected embedding).

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{layer_norm, linear, LayerNorm, Linear, VarBuilder};
use serde::Deserialize;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClipActivation {
    QuickGelu,
    Gelu,
}

/// The fields of a transformers `text_encoder/config.json` that decide the architecture.
#[derive(Debug, Clone, Deserialize)]
pub struct ClipTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub hidden_act: ClipActivation,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// transformers pools at `argmax(input_ids)` when this is 2 (the legacy configs SD ships),
    /// else at the first `eos_token_id`.
    #[serde(default = "default_eos")]
    pub eos_token_id: u32,
    /// Width of `text_projection` (`CLIPTextModelWithProjection` only).
    #[serde(default)]
    pub projection_dim: Option<usize>,
}

fn default_eos() -> u32 {
    2
}

fn default_eps() -> f64 {
    1e-5
}

impl ClipTextConfig {
    pub fn from_file(path: &Path) -> tessera_core::Result<Self> {
        crate::config::read_json(path)
    }
}

struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
}

impl Attention {
    fn new(vb: VarBuilder, c: &ClipTextConfig) -> Result<Self> {
        let h = c.hidden_size;
        Ok(Self {
            q: linear(h, h, vb.pp("q_proj"))?,
            k: linear(h, h, vb.pp("k_proj"))?,
            v: linear(h, h, vb.pp("v_proj"))?,
            out: linear(h, h, vb.pp("out_proj"))?,
            heads: c.num_attention_heads,
        })
    }

    fn forward(&self, x: &Tensor, causal_mask: &Tensor) -> Result<Tensor> {
        let (b, n, c) = x.dims3()?;
        let d = c / self.heads;
        let split = |t: Tensor| {
            t.reshape((b, n, self.heads, d))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split((self.q.forward(x)? * (d as f64).powf(-0.5))?)?;
        let k = split(self.k.forward(x)?)?;
        let v = split(self.v.forward(x)?)?;
        let dtype = q.dtype();
        // Scores and softmax in f32 whatever the weights' dtype.
        let scores = q
            .to_dtype(DType::F32)?
            .matmul(&k.to_dtype(DType::F32)?.t()?)?;
        let scores = scores.broadcast_add(causal_mask)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(dtype)?;
        let y = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, n, c))?;
        self.out.forward(&y)
    }
}

struct Layer {
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    act: ClipActivation,
    eps: f64,
}

impl Layer {
    fn new(vb: VarBuilder, c: &ClipTextConfig) -> Result<Self> {
        let (h, eps) = (c.hidden_size, c.layer_norm_eps);
        Ok(Self {
            norm1: layer_norm(h, eps, vb.pp("layer_norm1"))?,
            attn: Attention::new(vb.pp("self_attn"), c)?,
            norm2: layer_norm(h, eps, vb.pp("layer_norm2"))?,
            fc1: linear(h, c.intermediate_size, vb.pp("mlp.fc1"))?,
            fc2: linear(c.intermediate_size, h, vb.pp("mlp.fc2"))?,
            act: c.hidden_act,
            eps,
        })
    }

    fn forward(&self, x: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let x = (x + self.attn.forward(&norm(&self.norm1, x, self.eps)?, mask)?)?;
        let h = self.fc1.forward(&norm(&self.norm2, &x, self.eps)?)?;
        let h = match self.act {
            ClipActivation::QuickGelu => (&h * candle_nn::ops::sigmoid(&(&h * 1.702)?)?)?,
            ClipActivation::Gelu => h.gelu_erf()?,
        };
        x + self.fc2.forward(&h)?
    }
}

/// LayerNorm computed in f32 (half-precision weights lose too much in the variance).
fn norm(ln: &LayerNorm, x: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    if dtype == DType::F32 {
        return ln.forward(x);
    }
    let w = ln.weight().to_dtype(DType::F32)?;
    let b = ln.bias().map(|b| b.to_dtype(DType::F32)).transpose()?;
    let x = x.to_dtype(DType::F32)?;
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let y = xc.broadcast_div(&(var + eps)?.sqrt()?)?.broadcast_mul(&w)?;
    let y = match b {
        Some(b) => y.broadcast_add(&b)?,
        None => y,
    };
    y.to_dtype(dtype)
}

pub struct ClipTextModel {
    token_embedding: candle_nn::Embedding,
    position_embedding: Tensor,
    layers: Vec<Layer>,
    final_norm: LayerNorm,
    eps: f64,
}

impl ClipTextModel {
    pub fn new(vb: VarBuilder, c: &ClipTextConfig) -> Result<Self> {
        let vb = vb.pp("text_model");
        let emb = vb.pp("embeddings");
        let token_embedding =
            candle_nn::embedding(c.vocab_size, c.hidden_size, emb.pp("token_embedding"))?;
        let position_embedding = emb.get(
            (c.max_position_embeddings, c.hidden_size),
            "position_embedding.weight",
        )?;
        let layers = (0..c.num_hidden_layers)
            .map(|i| Layer::new(vb.pp(format!("encoder.layers.{i}")), c))
            .collect::<Result<_>>()?;
        let final_norm = layer_norm(c.hidden_size, c.layer_norm_eps, vb.pp("final_layer_norm"))?;
        Ok(Self {
            token_embedding,
            position_embedding,
            layers,
            final_norm,
            eps: c.layer_norm_eps,
        })
    }

    /// `last_hidden_state` (B, n, hidden) for token ids (B, n).
    pub fn forward(&self, input_ids: &Tensor) -> Result<Tensor> {
        Ok(self.hidden_states(input_ids)?.1)
    }

    /// `(hidden_states[-2], last_hidden_state)`: the penultimate layer's output (before the
    /// final norm, what SDXL conditions on) and the normed last one.
    pub fn hidden_states(&self, input_ids: &Tensor) -> Result<(Tensor, Tensor)> {
        let (_, n) = input_ids.dims2()?;
        let x = self.token_embedding.forward(input_ids)?;
        let mut x = x.broadcast_add(&self.position_embedding.narrow(0, 0, n)?)?;
        let mask = causal_mask(n, x.device())?;
        let mut penultimate = x.clone();
        for layer in &self.layers {
            penultimate = x;
            x = layer.forward(&penultimate, &mask)?;
        }
        Ok((penultimate, norm(&self.final_norm, &x, self.eps)?))
    }
}

/// `CLIPTextModelWithProjection`: the text model plus `text_projection` (no bias) of the
/// pooled output.
pub struct ClipTextModelWithProjection {
    text: ClipTextModel,
    projection: Linear,
    eos: u32,
}

impl ClipTextModelWithProjection {
    pub fn new(vb: VarBuilder, c: &ClipTextConfig) -> Result<Self> {
        let out = c.projection_dim.unwrap_or(c.hidden_size);
        Ok(Self {
            text: ClipTextModel::new(vb.clone(), c)?,
            projection: candle_nn::linear_no_bias(c.hidden_size, out, vb.pp("text_projection"))?,
            eos: c.eos_token_id,
        })
    }

    /// `(hidden_states[-2], text_embeds)`: (B, n, hidden) and the projected pooled (B, P).
    pub fn forward(&self, input_ids: &Tensor) -> Result<(Tensor, Tensor)> {
        let (penultimate, last) = self.text.hidden_states(input_ids)?;
        let ids = input_ids.to_dtype(DType::U32)?.to_vec2::<u32>()?;
        let rows = ids
            .iter()
            .enumerate()
            .map(|(i, row)| {
                let pos = match self.eos {
                    2 => (0..row.len()).rev().max_by_key(|&j| row[j]),
                    eos => row.iter().position(|&id| id == eos),
                };
                last.get(i)?.get(pos.unwrap_or(row.len() - 1))?.unsqueeze(0)
            })
            .collect::<Result<Vec<_>>>()?;
        let pooled = Tensor::cat(&rows, 0)?;
        Ok((penultimate, self.projection.forward(&pooled)?))
    }
}

/// (n, n) additive mask: 0 on and below the diagonal, -inf above.
fn causal_mask(n: usize, device: &Device) -> Result<Tensor> {
    let v: Vec<f32> = (0..n)
        .flat_map(|i| (0..n).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(v, (n, n), device)
}
