//! A diffusers model folder (`model_index.json`, `unet/`, `vae/`, `text_encoder/`, ...): its
//! configs, and its components loaded into the networks on a runtime.

mod components;

use crate::infer::{self, Inferred};
use crate::infer_sdxl;
use candle_core::DType;
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tessera_core::{Error, Result};
use tessera_nn::ldm::{self, LdmSource, Part};
use tessera_nn::lora::{self, LoraSet, WithLora};
use tessera_nn::{weights, Runtime};

/// The repository's `models/` folder (the bundled models).
fn bundled(name: &str) -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crates/models sits two levels below the repository");
    repo.join("models").join(name)
}

/// A stored tensor: name, dtype, element count.
pub type WeightEntry = (String, DType, u64);

/// A diffusers model folder (`model_index.json`, `unet/`, `vae/`, `text_encoder/`, ...).
#[derive(Debug, Clone)]
pub struct ModelDir {
    pub root: PathBuf,
    /// How many times each component was loaded (clones share it): the render report shows
    /// it, so a model loaded twice is visible.
    loads: Arc<Mutex<BTreeMap<&'static str, usize>>>,
    /// LoRAs merged into the UNet's and text encoder's weights as they are read.
    loras: Option<Arc<LoraSet>>,
    /// A single-file LDM checkpoint holding every weight; `root` then only gives the configs.
    single: Option<Arc<weights::WeightFile>>,
    /// The configs of a single file read without `--config`, from its shapes.
    inferred: Option<Arc<Inferred>>,
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
            loras: None,
            single: None,
            inferred: None,
        })
    }

    /// `--model PATH [--config DIR]`: a diffusers folder, or a single-file LDM checkpoint
    /// whose configs (and tokenizer, scheduler) come from `config`.
    pub fn open_model(path: impl AsRef<Path>, config: Option<&Path>) -> Result<Self> {
        let path = path.as_ref();
        if !path.is_file() {
            return Self::open(path);
        }
        let file = weights::WeightFile::open(path).map_err(|e| {
            Error::input(
                path,
                None,
                format!("cannot read: {e}"),
                "give a .safetensors file",
            )
        })?;
        let sdxl = infer_sdxl::is_sdxl(&file);
        let mut dir = match config {
            Some(config) => Self::open_configs(config)?,
            None => Self {
                root: path.to_path_buf(),
                loads: Default::default(),
                loras: None,
                single: None,
                inferred: Some(Arc::new(match sdxl {
                    true => infer_sdxl::infer(&file)?,
                    false => infer::infer(&file)?,
                })),
            },
        };
        let has = |prefix: &str| file.shapes().any(|(n, _)| n.starts_with(prefix));
        let text = sdxl || has(ldm::SD1_TEXT_PREFIX) || has(ldm::SD2_TEXT_PREFIX);
        for (prefix, found) in [
            (ldm::UNET_PREFIX, has(ldm::UNET_PREFIX)),
            (ldm::VAE_PREFIX, has(ldm::VAE_PREFIX)),
            (ldm::SD1_TEXT_PREFIX, text),
        ] {
            if !found {
                return Err(Error::input(
                    path,
                    Some(prefix),
                    format!(
                        "no {prefix}* tensors: not an SD 1.x/2.x/SDXL checkpoint in the LDM layout"
                    ),
                    "give an SD 1.x/2.x/SDXL .safetensors checkpoint (A1111 layout) or a \
                     diffusers folder",
                ));
            }
        }
        if dir.is_sdxl()? != sdxl {
            let (file_is, config_is) = match sdxl {
                true => ("an SDXL checkpoint", "not an SDXL folder"),
                false => ("not an SDXL checkpoint", "an SDXL folder"),
            };
            return Err(Error::input(
                path,
                None,
                format!(
                    "{file_is}, but --config {} is {config_is}",
                    dir.root.display()
                ),
                "give --config a diffusers folder of the checkpoint's own family",
            ));
        }
        dir.single = Some(Arc::new(file));
        Ok(dir)
    }

    /// A config folder: the diffusers layout's configs, tokenizer and scheduler (weights
    /// optional).
    fn open_configs(root: &Path) -> Result<Self> {
        for part in [
            "unet/config.json",
            "vae/config.json",
            "text_encoder/config.json",
        ] {
            if !root.join(part).is_file() {
                return Err(Error::input(
                    root.join(part),
                    None,
                    format!("the config folder has no {part}"),
                    "give --config a diffusers model folder of the checkpoint's architecture",
                ));
            }
        }
        Ok(Self {
            root: root.to_path_buf(),
            loads: Default::default(),
            loras: None,
            single: None,
            inferred: None,
        })
    }

    /// Every weight of `component` as (name, stored dtype, elements), from the headers: the
    /// diffusers names of a folder, the LDM names (prefix removed) of a single file; and the
    /// file they are in.
    pub fn weight_entries(
        &self,
        component: &str,
        stem: &str,
    ) -> Result<(PathBuf, Vec<WeightEntry>)> {
        if let Some(file) = &self.single {
            let prefix = match component {
                "unet" => ldm::UNET_PREFIX,
                "vae" => ldm::VAE_PREFIX,
                _ => text_prefix(file, component),
            };
            let entries = file
                .entries()
                .filter_map(|(n, d, c)| Some((n.strip_prefix(prefix)?.to_string(), d, c)))
                .collect();
            return Ok((file.path().to_path_buf(), entries));
        }
        let path = self.weights(component, stem)?;
        let file = self.open_weights(&path)?;
        let entries = file
            .entries()
            .map(|(n, d, c)| (n.to_string(), d, c))
            .collect();
        Ok((path, entries))
    }

    /// The single-file checkpoint, if the weights come from one.
    pub fn single_file(&self) -> Option<&Path> {
        self.single.as_deref().map(|f| f.path())
    }

    /// Merge the LoRA files `(path, weight)` into the UNet and text encoder as they are
    /// loaded (resident or streamed). Every module must match a weight of the model.
    pub fn with_loras(mut self, loras: &[(PathBuf, f64)]) -> Result<Self> {
        if loras.is_empty() {
            return Ok(self);
        }
        let mut set = LoraSet::default();
        for (path, weight) in loras {
            set.add(path, *weight)?;
        }
        // Folder weights name every module, so a LoRA for another model is caught here.
        let sdxl = self.is_sdxl()?;
        if !sdxl {
            // No second text encoder: every module of one is refused, with its file.
            let none = std::iter::empty();
            set.check_targets(lora::TEXT_ENCODER_2, none, None, &self.root)?;
        }
        let mut components = vec![
            ("unet", "diffusion_pytorch_model", lora::UNET),
            ("text_encoder", "model", lora::TEXT_ENCODER),
        ];
        if sdxl {
            components.push(("text_encoder_2", "model", lora::TEXT_ENCODER_2));
        }
        if self.single.is_some() {
            components.clear();
        }
        for (component, stem, prefix) in components {
            let path = self.weights(component, stem)?;
            let file = self.open_weights(&path)?;
            let ldm = self.lora_ldm_names(component)?;
            set.check_targets(prefix, file.shapes().map(|(n, _)| n), ldm.as_ref(), &path)?;
        }
        self.loras = Some(Arc::new(set));
        Ok(self)
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
        let source: Box<dyn SimpleBackend> = match &self.single {
            Some(file) => Box::new(LdmSource::new(file.clone(), self.ldm_part(component)?)),
            None => Box::new(self.open_weights(&self.weights(component, stem)?)?),
        };
        let prefix = match component {
            "unet" => lora::UNET,
            "text_encoder" => lora::TEXT_ENCODER,
            "text_encoder_2" => lora::TEXT_ENCODER_2,
            _ => "",
        };
        let source: Box<dyn SimpleBackend> = match &self.loras {
            Some(set) if !prefix.is_empty() && set.touches(prefix) => Box::new(WithLora::new(
                source,
                set.clone(),
                prefix,
                self.lora_ldm_names(component)?,
            )),
            _ => source,
        };
        Ok(VarBuilder::from_backend(source, dtype, rt.device.clone()))
    }

    /// The UNet's LDM layout, under whose names SDXL kohya LoRAs name its modules.
    fn lora_ldm_names(&self, component: &str) -> Result<Option<Part>> {
        match component {
            "unet" => self.ldm_part("unet").map(Some),
            _ => Ok(None),
        }
    }

    /// Where `component` lives in a single-file checkpoint.
    fn ldm_part(&self, component: &str) -> Result<Part> {
        Ok(match component {
            "unet" => {
                let cfg = self.unet_config()?;
                Part::Unet {
                    layers_per_block: cfg.layers_per_block,
                    up_attention: cfg
                        .up_block_types
                        .iter()
                        .map(|t| t.contains("CrossAttn"))
                        .collect(),
                }
            }
            "vae" => Part::Vae {
                levels: self.vae_config()?.block_out_channels.len(),
            },
            _ => {
                let file = self.single.as_ref().ok_or_else(|| {
                    Error::Other(format!("{component}: not a single-file checkpoint"))
                })?;
                let prefix = text_prefix(file, component).to_string();
                match prefix.as_str() {
                    ldm::SD2_TEXT_PREFIX | ldm::SDXL_TEXT2_PREFIX => Part::OpenClip { prefix },
                    _ => Part::TextEncoder { prefix },
                }
            }
        })
    }

    fn open_weights(&self, path: &Path) -> Result<weights::WeightFile> {
        weights::WeightFile::open(path).map_err(|e| {
            Error::input(
                path,
                None,
                format!("cannot read weights: {e}"),
                "re-download it",
            )
        })
    }
}

/// Where a single file keeps the text encoder `component` (`text_encoder`, or SDXL's
/// `text_encoder_2`): SDXL's embedders, SD 1.x's CLIP or SD 2.x's OpenCLIP.
fn text_prefix(file: &weights::WeightFile, component: &str) -> &'static str {
    let has = |prefix: &str| file.entries().any(|(n, _, _)| n.starts_with(prefix));
    match component {
        "text_encoder_2" => ldm::SDXL_TEXT2_PREFIX,
        _ if has(ldm::SDXL_TEXT_PREFIX) => ldm::SDXL_TEXT_PREFIX,
        _ if has(ldm::SD1_TEXT_PREFIX) => ldm::SD1_TEXT_PREFIX,
        _ => ldm::SD2_TEXT_PREFIX,
    }
}
