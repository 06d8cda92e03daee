//! A diffusers model folder (`model_index.json`, `unet/`, `vae/`, `text_encoder/`, ...): its
//! configs, and its components loaded into the networks on a runtime.

use candle_core::DType;
use candle_nn::VarBuilder;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tessera_core::{Error, Result};
use tessera_diffusion::autoencoder::VaeSource;
use tessera_diffusion::scheduler::SchedulerConfig;
use tessera_nn::{clip, tokenizer, unet, vae, weights, Runtime};

/// The repository's `models/` folder (the bundled models).
fn bundled(name: &str) -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crates/models sits two levels below the repository");
    repo.join("models").join(name)
}

/// A diffusers model folder (`model_index.json`, `unet/`, `vae/`, `text_encoder/`, ...).
#[derive(Debug, Clone)]
pub struct ModelDir {
    pub root: PathBuf,
    /// How many times each component was loaded (clones share it): the render report shows
    /// it, so a model loaded twice is visible.
    loads: Arc<Mutex<BTreeMap<&'static str, usize>>>,
}

impl ModelDir {
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        if !root.is_dir() {
            return Err(Error::input(
                &root,
                None,
                "model folder not found",
                "give --model (or `model = \"...\"` in the spec) the path of a diffusers model \
                 folder, e.g. a local clone of stable-diffusion-v1-5",
            ));
        }
        for part in ["unet", "vae", "text_encoder", "tokenizer"] {
            if !root.join(part).is_dir() {
                return Err(Error::input(
                    root.join(part),
                    None,
                    format!("the model folder has no {part}/ subfolder"),
                    "use the diffusers folder layout (as saved by `save_pretrained`)",
                ));
            }
        }
        Ok(Self {
            root,
            loads: Default::default(),
        })
    }

    /// The bundled trained tiny model (`models/tiny-poster`), used when no model is given.
    pub fn bundled_default() -> PathBuf {
        bundled("tiny-poster")
    }

    /// The bundled random-weight parity fixture (`models/tiny-sd`): the template of
    /// `model synth --arch tiny`.
    pub fn bundled_tiny() -> PathBuf {
        bundled("tiny-sd")
    }

    /// Loads so far, per component.
    pub fn loads(&self) -> BTreeMap<&'static str, usize> {
        self.loads.lock().map(|l| l.clone()).unwrap_or_default()
    }

    fn count_load(&self, component: &'static str) {
        if let Ok(mut loads) = self.loads.lock() {
            *loads.entry(component).or_default() += 1;
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// `component/stem.safetensors`, else the `.fp16.safetensors` variant.
    pub fn weights(&self, component: &str, stem: &str) -> Result<PathBuf> {
        let dir = self.root.join(component);
        let candidates = [
            format!("{stem}.safetensors"),
            format!("{stem}.fp16.safetensors"),
        ];
        candidates
            .iter()
            .map(|f| dir.join(f))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                Error::input(
                    &dir,
                    None,
                    format!("no {stem}.safetensors or {stem}.fp16.safetensors"),
                    "tessera reads safetensors weights; convert .bin checkpoints with diffusers' \
                     save_pretrained(safe_serialization=True)",
                )
            })
    }

    /// Weights of one component, read tensor by tensor (see [`weights`]) onto the runtime's
    /// device in `dtype`.
    pub fn var_builder(
        &self,
        rt: &Runtime,
        component: &str,
        stem: &str,
        dtype: DType,
    ) -> Result<VarBuilder<'static>> {
        let path = self.weights(component, stem)?;
        let file = weights::WeightFile::open(&path).map_err(|e| {
            Error::input(
                &path,
                None,
                format!("cannot read weights: {e}"),
                "re-download it",
            )
        })?;
        Ok(file.into_var_builder(dtype, &rt.device))
    }

    pub fn unet_config(&self) -> Result<unet::UNetConfig> {
        unet::UNetConfig::from_file(&self.path("unet/config.json"))
    }

    pub fn vae_config(&self) -> Result<vae::VaeConfig> {
        vae::VaeConfig::from_file(&self.path("vae/config.json"))
    }

    pub fn text_encoder_config(&self) -> Result<clip::ClipTextConfig> {
        clip::ClipTextConfig::from_file(&self.path("text_encoder/config.json"))
    }

    pub fn scheduler_config(&self) -> Result<SchedulerConfig> {
        let path = self.path("scheduler/scheduler_config.json");
        if path.is_file() {
            SchedulerConfig::from_file(&path)
        } else {
            Ok(SchedulerConfig::default())
        }
    }

    pub fn tokenizer(&self) -> Result<tokenizer::ClipTokenizer> {
        tokenizer::ClipTokenizer::from_dir(&self.path("tokenizer"))
    }

    /// Whether this is an SDXL folder: a `text_time` UNet, with `text_encoder_2/` and
    /// `tokenizer_2/` beside the first encoder.
    pub fn is_sdxl(&self) -> Result<bool> {
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
        clip::ClipTextConfig::from_file(&self.path("text_encoder_2/config.json"))
    }

    pub fn tokenizer_2(&self) -> Result<tokenizer::ClipTokenizer> {
        tokenizer::ClipTokenizer::from_dir(&self.path("tokenizer_2"))
    }

    /// `model_index.json`'s `force_zeros_for_empty_prompt` (false when absent).
    pub fn force_zeros_for_empty_prompt(&self) -> Result<bool> {
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
