//! LoRA files (kohya/A1111 `lora_unet_…` and diffusers/PEFT `lora_A`/`lora_B`), merged into a
//! weight as the loader produces it: `W' = W + Σ weight · alpha/rank · up @ down`. Merging at
//! load time costs nothing per step and works the same for resident and streamed weights.
//!
//! Modules are keyed by kohya's flat name (`lora_unet_` / `lora_te_` / `lora_te2_` + the module
//! path with `.` turned into `_`). kohya names cannot be split back on `_`, so the lookup goes
//! from the model side: the loader flattens the name it asks for, as A1111 does. SDXL kohya
//! files name UNet modules in the LDM layout (`lora_unet_input_blocks_4_1_…`) and the first
//! text encoder `lora_te1_`: the UNet lookup also tries the LDM name of the module.

use crate::ldm::{Part, UNET_PREFIX};
use crate::runtime::host;
use crate::weights::WeightFile;
use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tessera_core::Error;

/// The component prefixes of the flat names.
pub const UNET: &str = "lora_unet_";
pub const TEXT_ENCODER: &str = "lora_te_";
/// SDXL's second text encoder (kohya `lora_te2_`, PEFT `text_encoder_2.`).
pub const TEXT_ENCODER_2: &str = "lora_te2_";
/// kohya's name of SDXL's first text encoder, read as [`TEXT_ENCODER`].
const KOHYA_TE1: &str = "lora_te1_";

struct Module {
    down: Tensor,
    up: Tensor,
    /// weight × alpha / rank.
    scale: f64,
    /// The file, for errors.
    file: Arc<PathBuf>,
}

/// Every LoRA of a render, by flat module name (several files may touch one module).
#[derive(Default)]
pub struct LoraSet {
    modules: HashMap<String, Vec<Module>>,
}

fn input(path: &Path, key: &str, msg: impl Into<String>, fix: impl Into<String>) -> Error {
    Error::input(path, Some(key), msg, fix)
}

/// The flat name of a module path: `down_blocks.0.attentions.0` → `down_blocks_0_attentions_0`.
pub fn flat(prefix: &str, module: &str) -> String {
    format!("{prefix}{}", module.replace('.', "_"))
}

#[derive(Default)]
struct Parts {
    down: Option<Tensor>,
    up: Option<Tensor>,
    alpha: Option<f64>,
    key: String,
}

/// PEFT's alpha for `module` of `component` from `lora_adapter_metadata` (`alpha_pattern`
/// entries match a module path or its dotted suffix); `None`: alpha = rank.
fn peft_alpha(meta: &serde_json::Value, component: &str, module: &str) -> Option<f64> {
    if let Some(patterns) = meta
        .get(format!("{component}.alpha_pattern"))
        .and_then(|p| p.as_object())
    {
        for (pattern, alpha) in patterns {
            if module == pattern || module.ends_with(&format!(".{pattern}")) {
                return alpha.as_f64();
            }
        }
    }
    meta.get(format!("{component}.lora_alpha"))
        .and_then(|a| a.as_f64())
}

impl std::fmt::Debug for LoraSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LoraSet({} modules)", self.modules.len())
    }
}

impl LoraSet {
    /// Add the LoRA file `path` at strength `weight`.
    pub fn add(&mut self, path: &Path, weight: f64) -> tessera_core::Result<()> {
        let fix_file = "give a LoRA .safetensors file (kohya/A1111 or diffusers/PEFT format)";
        let file = WeightFile::open(path)
            .map_err(|e| Error::input(path, None, format!("cannot read: {e}"), fix_file))?;
        let peft_meta: Option<serde_json::Value> = file
            .metadata()
            .get("lora_adapter_metadata")
            .and_then(|m| serde_json::from_str(m).ok());
        let mut parts: HashMap<String, Parts> = HashMap::new();
        let names: Vec<String> = file.shapes().map(|(n, _)| n.to_string()).collect();
        for key in names {
            let (name, role, component_module) = parse_key(&key).ok_or_else(|| {
                input(
                    path,
                    &key,
                    "not a LoRA tensor name tessera knows",
                    "use a kohya/A1111 (lora_unet_…/lora_te_…/lora_te1_…/lora_te2_… with \
                     lora_down/lora_up/alpha) or diffusers/PEFT (unet.…/text_encoder.…/\
                     text_encoder_2.… with lora_A/lora_B) SD 1.x/2.x/SDXL LoRA",
                )
            })?;
            let tensor = file
                .load(&key, DType::F32, &host())
                .map_err(|e| input(path, &key, format!("cannot read: {e}"), fix_file))?;
            let entry = parts.entry(name).or_default();
            entry.key = key.clone();
            match role {
                Role::Down => entry.down = Some(tensor),
                Role::Up => entry.up = Some(tensor),
                Role::Alpha => {
                    let a = tensor.flatten_all().and_then(|t| t.to_vec1::<f32>());
                    entry.alpha = a.ok().and_then(|v| v.first().copied()).map(f64::from);
                }
            }
            if let (Some((component, module)), Some(meta)) = (component_module, &peft_meta) {
                if entry.alpha.is_none() {
                    entry.alpha = peft_alpha(meta, component, &module);
                }
            }
        }
        let file_name = Arc::new(path.to_path_buf());
        for (name, p) in parts {
            let (Some(down), Some(up)) = (p.down, p.up) else {
                return Err(input(
                    path,
                    &p.key,
                    "a LoRA module needs both its down (lora_down / lora_A) and up (lora_up / \
                     lora_B) tensor",
                    "use a complete LoRA file",
                ));
            };
            let rank = down
                .dim(0)
                .map_err(|e| input(path, &p.key, e.to_string(), fix_file))?;
            let alpha = p.alpha.unwrap_or(rank as f64);
            self.modules.entry(name).or_default().push(Module {
                down,
                up,
                scale: weight * alpha / rank as f64,
                file: file_name.clone(),
            });
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.modules.is_empty()
    }

    /// Whether any module belongs to the component of `prefix`.
    pub fn touches(&self, prefix: &str) -> bool {
        self.modules.keys().any(|k| k.starts_with(prefix))
    }

    /// Refuse modules of `prefix` that match no weight of the component (`weights`: its
    /// tensor names; `ldm`: the UNet's LDM names, which SDXL kohya files use): a LoRA made
    /// for another model would otherwise change nothing, silently.
    pub fn check_targets<'a>(
        &self,
        prefix: &str,
        weights: impl Iterator<Item = &'a str>,
        ldm: Option<&Part>,
        component: &Path,
    ) -> tessera_core::Result<()> {
        let mut known = HashSet::new();
        for w in weights {
            known.extend(module_names(prefix, w, ldm));
        }
        for (name, modules) in &self.modules {
            if name.starts_with(prefix) && !known.contains(name) {
                return Err(input(
                    &modules[0].file,
                    name,
                    format!(
                        "the LoRA module matches no weight of {}",
                        component.display()
                    ),
                    "use a LoRA made for this model family (SD 1.x/2.x/SDXL LoRAs in kohya or \
                     diffusers naming)",
                ));
            }
        }
        Ok(())
    }

    /// `weight` with every LoRA of module `name` (flat) merged in, all in f32 on its device.
    fn merge(&self, name: &str, weight: Tensor) -> Result<Tensor> {
        let Some(modules) = self.modules.get(name) else {
            return Ok(weight);
        };
        let device = weight.device().clone();
        let mut w = weight.to_dtype(DType::F32)?;
        for m in modules {
            let up = m.up.flatten_from(1)?.to_device(&device)?;
            let down = m.down.flatten_from(1)?.to_device(&device)?;
            let delta = (up.matmul(&down)? * m.scale)?;
            if delta.elem_count() != w.elem_count() {
                candle_core::bail!(
                    "{}: LoRA module {name} has shape {:?}, the weight {:?}",
                    m.file.display(),
                    delta.dims(),
                    w.dims()
                );
            }
            let delta = delta.reshape(w.shape())?;
            w = (w + delta)?;
        }
        Ok(w)
    }
}

enum Role {
    Down,
    Up,
    Alpha,
}

/// A PEFT tensor's component (`unet`, `text_encoder`, `text_encoder_2`) and module path, for
/// its alpha.
type PeftModule = (&'static str, String);

/// The flat module names a weight `name` of a component may have in a LoRA: its diffusers
/// path, and with `ldm` its LDM path.
fn module_names(prefix: &str, name: &str, ldm: Option<&Part>) -> Vec<String> {
    let Some(module) = name.strip_suffix(".weight") else {
        return vec![];
    };
    let mut names = vec![flat(prefix, module)];
    let ldm_module = ldm.and_then(|p| p.key(name)).and_then(|k| {
        let key = k.name.strip_prefix(UNET_PREFIX).unwrap_or(&k.name);
        key.strip_suffix(".weight").map(str::to_string)
    });
    names.extend(ldm_module.map(|m| flat(prefix, &m)));
    names
}

/// A text-encoder module path as the model names it: transformers 5 drops CLIPTextModel's
/// `text_model.` level, the checkpoints keep it (the projection sits beside it).
fn text_model_path(path: &str) -> String {
    if path.starts_with("text_model.") || path.starts_with("text_projection.") {
        path.to_string()
    } else {
        format!("text_model.{path}")
    }
}

/// A LoRA tensor name → (flat module name, role, PEFT (component, module path) if PEFT).
fn parse_key(key: &str) -> Option<(String, Role, Option<PeftModule>)> {
    let kohya = [UNET, TEXT_ENCODER, TEXT_ENCODER_2, KOHYA_TE1];
    if kohya.iter().any(|p| key.starts_with(p)) {
        let (name, rest) = key.split_once('.')?;
        let name = match name.strip_prefix(KOHYA_TE1) {
            Some(module) => format!("{TEXT_ENCODER}{module}"),
            None => name.to_string(),
        };
        let role = match rest {
            "lora_down.weight" => Role::Down,
            "lora_up.weight" => Role::Up,
            "alpha" => Role::Alpha,
            _ => return None,
        };
        return Some((name, role, None));
    }
    let (component, prefix, rest) = if let Some(r) = key.strip_prefix("unet.") {
        ("unet", UNET, r.to_string())
    } else if let Some(r) = key.strip_prefix("text_encoder_2.") {
        ("text_encoder_2", TEXT_ENCODER_2, text_model_path(r))
    } else if let Some(r) = key.strip_prefix("text_encoder.") {
        ("text_encoder", TEXT_ENCODER, text_model_path(r))
    } else {
        return None;
    };
    let (module, role) = if let Some(m) = rest.strip_suffix(".lora_A.weight") {
        (m, Role::Down)
    } else if let Some(m) = rest.strip_suffix(".lora_B.weight") {
        (m, Role::Up)
    } else {
        return None;
    };
    let peft_module = module.strip_prefix("text_model.").unwrap_or(module);
    Some((
        flat(prefix, module),
        role,
        Some((component, peft_module.to_string())),
    ))
}

/// A weight source with a component's LoRAs merged into the weights it hands out.
pub struct WithLora {
    inner: Box<dyn SimpleBackend>,
    loras: Arc<LoraSet>,
    prefix: &'static str,
    /// The UNet's LDM layout, for modules named the LDM way (SDXL kohya files).
    ldm: Option<Part>,
}

impl WithLora {
    pub fn new(
        inner: Box<dyn SimpleBackend>,
        loras: Arc<LoraSet>,
        prefix: &'static str,
        ldm: Option<Part>,
    ) -> Self {
        Self {
            inner,
            loras,
            prefix,
            ldm,
        }
    }

    /// The flat name of `name`'s module if a LoRA touches it.
    fn touched(&self, name: &str) -> Option<String> {
        module_names(self.prefix, name, self.ldm.as_ref())
            .into_iter()
            .find(|m| self.loras.modules.contains_key(m))
    }
}

impl SimpleBackend for WithLora {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        match self.touched(name) {
            Some(module) => {
                let t = self.inner.get(s, name, h, DType::F32, dev)?;
                self.loras.merge(&module, t)?.to_dtype(dtype)
            }
            None => self.inner.get(s, name, h, dtype, dev),
        }
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        match self.touched(name) {
            Some(module) => {
                let t = self.inner.get_unchecked(name, DType::F32, dev)?;
                self.loras.merge(&module, t)?.to_dtype(dtype)
            }
            None => self.inner.get_unchecked(name, dtype, dev),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.inner.contains_tensor(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SDXL names as kohya's sd-scripts and diffusers write them (SDXL base's UNet layout).
    #[test]
    fn sdxl_module_names() {
        let name = |key: &str| parse_key(key).unwrap().0;
        let te = "text_model_encoder_layers_0_self_attn_q_proj";
        assert_eq!(
            name(&format!("lora_te1_{te}.alpha")),
            format!("{TEXT_ENCODER}{te}")
        );
        for key in [
            "text_encoder_2.encoder.layers.0.self_attn.q_proj.lora_A.weight",
            "text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight",
        ] {
            assert_eq!(name(key), format!("{TEXT_ENCODER_2}{te}"));
        }
        assert_eq!(
            name("text_encoder_2.text_projection.lora_A.weight"),
            "lora_te2_text_projection"
        );
        let sdxl = Part::Unet {
            layers_per_block: 2,
            up_attention: vec![true, true, false],
        };
        let w = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight";
        assert_eq!(
            module_names(UNET, w, Some(&sdxl)),
            [
                "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q",
                "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"
            ]
        );
        let w = "up_blocks.0.attentions.2.proj_out.weight";
        assert!(module_names(UNET, w, Some(&sdxl))
            .contains(&"lora_unet_output_blocks_2_1_proj_out".to_string()));
    }
}
