//! A model folder's configs and its components, loaded into the networks on a runtime.

use super::{bundled, ModelDir};
use candle_core::DType;
use tessera_core::{Error, Result};
use tessera_diffusion::autoencoder::VaeSource;
use tessera_diffusion::scheduler::SchedulerConfig;
use tessera_nn::{clip, tokenizer, unet, vae, Runtime};

impl ModelDir {
    /// The family a single file's shapes named, when its configs were inferred.
    pub fn inferred_family(&self) -> Option<&'static str> {
        self.inferred.as_ref().map(|i| i.family)
    }

    pub fn unet_config(&self) -> Result<unet::UNetConfig> {
        match &self.inferred {
            Some(i) => Ok(i.unet.clone()),
            None => unet::UNetConfig::from_file(&self.path("unet/config.json")),
        }
    }

    pub fn vae_config(&self) -> Result<vae::VaeConfig> {
        match &self.inferred {
            Some(i) => Ok(i.vae.clone()),
            None => vae::VaeConfig::from_file(&self.path("vae/config.json")),
        }
    }

    pub fn text_encoder_config(&self) -> Result<clip::ClipTextConfig> {
        match &self.inferred {
            Some(i) => Ok(i.text.clone()),
            None => clip::ClipTextConfig::from_file(&self.path("text_encoder/config.json")),
        }
    }

    pub fn scheduler_config(&self) -> Result<SchedulerConfig> {
        if let Some(i) = &self.inferred {
            return Ok(i.scheduler.clone());
        }
        let path = self.path("scheduler/scheduler_config.json");
        if path.is_file() {
            SchedulerConfig::from_file(&path)
        } else {
            Ok(SchedulerConfig::default())
        }
    }

    pub fn tokenizer(&self) -> Result<tokenizer::ClipTokenizer> {
        match &self.inferred {
            // SD 1.x and 2.x share CLIP's BPE vocabulary, which the bundled model carries.
            Some(i) => tokenizer::ClipTokenizer::from_dir(&bundled("tiny-sd").join("tokenizer"))?
                .with_pad_token(i.pad_token),
            None => tokenizer::ClipTokenizer::from_dir(&self.path("tokenizer")),
        }
    }

    /// Whether this is an SDXL folder: a `text_time` UNet, with `text_encoder_2/` and
    /// `tokenizer_2/` beside the first encoder.
    pub fn is_sdxl(&self) -> Result<bool> {
        if let Some(i) = &self.inferred {
            return Ok(i.text_2.is_some());
        }
        if self.unet_config()?.text_time_dims().is_none() {
            return Ok(false);
        }
        for part in ["text_encoder_2", "tokenizer_2"] {
            if !self.root.join(part).is_dir() {
                return Err(Error::input(
                    self.root.join(part),
                    None,
                    format!("an SDXL UNet (addition_embed_type \"text_time\") but no {part}/"),
                    "use the complete SDXL diffusers folder (both text encoders and tokenizers)",
                ));
            }
        }
        Ok(true)
    }

    pub fn text_encoder_2_config(&self) -> Result<clip::ClipTextConfig> {
        match self.inferred.as_ref().and_then(|i| i.text_2.clone()) {
            Some(cfg) => Ok(cfg),
            None => clip::ClipTextConfig::from_file(&self.path("text_encoder_2/config.json")),
        }
    }

    pub fn tokenizer_2(&self) -> Result<tokenizer::ClipTokenizer> {
        match &self.inferred {
            // SDXL's second tokenizer is CLIP's, padding with "!".
            Some(_) => tokenizer::ClipTokenizer::from_dir(&bundled("tiny-sd").join("tokenizer"))?
                .with_pad_token("!"),
            None => tokenizer::ClipTokenizer::from_dir(&self.path("tokenizer_2")),
        }
    }

    /// `model_index.json`'s `force_zeros_for_empty_prompt` (false when absent).
    pub fn force_zeros_for_empty_prompt(&self) -> Result<bool> {
        if let Some(i) = &self.inferred {
            return Ok(i.force_zeros_for_empty_prompt);
        }
        let path = self.path("model_index.json");
        if !path.is_file() {
            return Ok(false);
        }
        let index: serde_json::Value = tessera_nn::config::read_json(&path)?;
        Ok(index["force_zeros_for_empty_prompt"].as_bool() == Some(true))
    }

    /// The UNet in `dtype`, every weight resident.
    pub fn load_unet(&self, rt: &Runtime, dtype: DType) -> Result<unet::UNet> {
        self.count_load("unet");
        let cfg = self.unet_config()?;
        let vb = self.var_builder(rt, "unet", "diffusion_pytorch_model", dtype)?;
        Ok(unet::UNet::new(vb, &cfg)?)
    }

    /// The UNet in streaming mode: each layer's weights are read from the file right before it
    /// runs and dropped after (low-RAM runs).
    pub fn load_unet_streaming(&self, rt: &Runtime, dtype: DType) -> Result<unet::UNet> {
        self.count_load("unet (streamed)");
        let cfg = self.unet_config()?;
        let vb = self.var_builder(rt, "unet", "diffusion_pytorch_model", dtype)?;
        Ok(unet::UNet::new_streaming(vb, &cfg))
    }

    pub fn load_vae(&self, rt: &Runtime, dtype: DType) -> Result<vae::AutoencoderKl> {
        self.count_load("vae");
        let cfg = self.vae_config()?;
        let vb = self.var_builder(rt, "vae", "diffusion_pytorch_model", dtype)?;
        Ok(vae::AutoencoderKl::new(vb, &cfg)?)
    }

    /// The VAE decoder alone (with `post_quant_conv`).
    pub fn load_vae_decoder(&self, rt: &Runtime, dtype: DType) -> Result<vae::Decoder> {
        self.count_load("vae decoder");
        let vb = self.var_builder(rt, "vae", "diffusion_pytorch_model", dtype)?;
        Ok(vae::Decoder::new(vb, &self.vae_config()?)?)
    }

    /// The VAE encoder alone (with `quant_conv`).
    pub fn load_vae_encoder(&self, rt: &Runtime, dtype: DType) -> Result<vae::Encoder> {
        self.count_load("vae encoder");
        let vb = self.var_builder(rt, "vae", "diffusion_pytorch_model", dtype)?;
        Ok(vae::Encoder::new(vb, &self.vae_config()?)?)
    }

    /// SDXL's second text encoder (`CLIPTextModelWithProjection`).
    pub fn load_text_encoder_2(
        &self,
        rt: &Runtime,
        dtype: DType,
    ) -> Result<clip::ClipTextModelWithProjection> {
        self.count_load("text encoder 2");
        let cfg = self.text_encoder_2_config()?;
        let vb = self.var_builder(rt, "text_encoder_2", "model", dtype)?;
        Ok(clip::ClipTextModelWithProjection::new(vb, &cfg)?)
    }

    pub fn load_text_encoder(&self, rt: &Runtime, dtype: DType) -> Result<clip::ClipTextModel> {
        self.count_load("text encoder");
        let cfg = self.text_encoder_config()?;
        let vb = self.var_builder(rt, "text_encoder", "model", dtype)?;
        Ok(clip::ClipTextModel::new(vb, &cfg)?)
    }
}

impl VaeSource for ModelDir {
    fn vae_config(&self) -> Result<vae::VaeConfig> {
        ModelDir::vae_config(self)
    }

    fn load_vae_encoder(&self, rt: &Runtime, dtype: DType) -> Result<vae::Encoder> {
        ModelDir::load_vae_encoder(self, rt, dtype)
    }

    fn load_vae_decoder(&self, rt: &Runtime, dtype: DType) -> Result<vae::Decoder> {
        ModelDir::load_vae_decoder(self, rt, dtype)
    }
}
