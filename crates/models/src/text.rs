//! The text side of a model folder: one CLIP encoder (SD 1.x / 2.x), or SDXL's two
//! (`text_encoder` + `text_encoder_2`, each with its tokenizer), turned into what the UNet
//! conditions on.

use crate::ModelDir;
use candle_core::{DType, Tensor};
use tessera_core::Result;
use tessera_nn::clip::{ClipTextModel, ClipTextModelWithProjection};
use tessera_nn::runtime::host;
use tessera_nn::tokenizer::ClipTokenizer;
use tessera_nn::Runtime;

/// Prompts, encoded (batch B).
pub struct Encoded {
    /// (B, tokens, C): the last hidden state (SD), or both encoders' penultimate hidden states
    /// concatenated (SDXL).
    pub context: Tensor,
    /// (B, P): SDXL's pooled, projected embedding of the second encoder.
    pub pooled: Option<Tensor>,
}

struct Second {
    tokenizer: ClipTokenizer,
    encoder: ClipTextModelWithProjection,
}

/// A model folder's text encoders, loaded.
pub struct TextEncoders {
    rt: Runtime,
    tokenizer: ClipTokenizer,
    encoder: ClipTextModel,
    second: Option<Second>,
    /// `force_zeros_for_empty_prompt` (SDXL): an absent negative prompt is all zeros.
    zeros_for_empty: bool,
}

impl TextEncoders {
    /// Load the folder's encoders in the runtime's text dtype.
    pub fn load(dir: &ModelDir, rt: &Runtime) -> Result<Self> {
        let dtype = rt.text_dtype();
        let second = match dir.is_sdxl()? {
            true => Some(Second {
                tokenizer: dir.tokenizer_2()?,
                encoder: dir.load_text_encoder_2(rt, dtype)?,
            }),
            false => None,
        };
        Ok(Self {
            rt: rt.clone(),
            tokenizer: dir.tokenizer()?,
            encoder: dir.load_text_encoder(rt, dtype)?,
            zeros_for_empty: second.is_some() && dir.force_zeros_for_empty_prompt()?,
            second,
        })
    }

    fn ids(&self, tokenizer: &ClipTokenizer, texts: &[&str]) -> Result<Tensor> {
        let ids = texts
            .iter()
            .map(|t| tokenizer.encode(t))
            .collect::<Result<Vec<_>>>()?;
        Ok(self.rt.to_device(&Tensor::new(ids, &host())?)?)
    }

    /// Encode prompts as one batch, in f32.
    pub fn encode(&self, texts: &[&str]) -> Result<Encoded> {
        let ids = self.ids(&self.tokenizer, texts)?;
        let Some(second) = &self.second else {
            return Ok(Encoded {
                context: self.encoder.forward(&ids)?.to_dtype(DType::F32)?,
                pooled: None,
            });
        };
        let (first, _) = self.encoder.hidden_states(&ids)?;
        let ids = self.ids(&second.tokenizer, texts)?;
        let (hidden, pooled) = second.encoder.forward(&ids)?;
        let context = Tensor::cat(&[first, hidden], 2)?.to_dtype(DType::F32)?;
        Ok(Encoded {
            context,
            pooled: Some(pooled.to_dtype(DType::F32)?),
        })
    }

    /// `[uncond (negative), cond (text)]` as one batch of 2. A model marked
    /// `force_zeros_for_empty_prompt` (SDXL) takes an empty negative as zeros, as diffusers
    /// does when no negative prompt is given.
    pub fn encode_pair(&self, negative: &str, text: &str) -> Result<Encoded> {
        let encoded = self.encode(&[negative, text])?;
        if !(self.zeros_for_empty && negative.is_empty()) {
            return Ok(encoded);
        }
        let zero_first = |t: Tensor| -> Result<Tensor> {
            let cond = t.narrow(0, 1, 1)?;
            Ok(Tensor::cat(&[cond.zeros_like()?, cond], 0)?)
        };
        Ok(Encoded {
            context: zero_first(encoded.context)?,
            pooled: encoded.pooled.map(zero_first).transpose()?,
        })
    }
}
