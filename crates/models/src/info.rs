//! `tessera model info`: what a model folder holds, read from configs and safetensors headers
//! without loading any weights.

use crate::ModelDir;
use std::collections::BTreeMap;
use std::fmt;
use tessera_core::Result;

/// Parameter count and stored dtypes of one component's weights file.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ComponentInfo {
    pub file: String,
    pub parameters: u64,
    pub dtypes: BTreeMap<String, u64>,
    pub bytes: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelInfo {
    pub family: String,
    /// `[width, height]` in pixels.
    pub native_size: [usize; 2],
    pub prediction_type: String,
    pub scheduler: String,
    pub unet: ComponentInfo,
    pub vae: ComponentInfo,
    pub text_encoder: ComponentInfo,
    /// SDXL's second text encoder.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text_encoder_2: Option<ComponentInfo>,
}

fn component(dir: &ModelDir, name: &str, stem: &str) -> Result<ComponentInfo> {
    let (path, entries) = dir.weight_entries(name, stem)?;
    let mut info = ComponentInfo {
        file: path.display().to_string(),
        parameters: 0,
        dtypes: BTreeMap::new(),
        bytes: 0,
    };
    for (_, dtype, n) in entries {
        info.parameters += n;
        info.bytes += n * dtype.size_in_bytes() as u64;
        *info
            .dtypes
            .entry(format!("{dtype:?}").to_uppercase())
            .or_default() += n;
    }
    Ok(info)
}

/// Family, native size, scheduler and per-component sizes of a model folder.
pub fn inspect(dir: &ModelDir) -> Result<ModelInfo> {
    let unet = dir.unet_config()?;
    let sched = dir.scheduler_config()?;
    let sdxl = dir.is_sdxl()?;
    let family = match (dir.inferred_family(), unet.cross_attention_dim) {
        (Some(f), _) => f,
        _ if sdxl && unet.cross_attention_dim == 2048 => "SDXL",
        _ if sdxl => "SDXL-shaped (custom sizes)",
        (None, 768) => "SD 1.x",
        (None, 1024) => "SD 2.x / Turbo",
        _ => "SD-1.x-shaped (custom sizes)",
    };
    Ok(ModelInfo {
        family: family.to_string(),
        native_size: {
            let (w, h) = native_size(dir)?;
            [w, h]
        },
        prediction_type: format!("{:?}", sched.prediction_type),
        scheduler: sched.class_name.clone().unwrap_or_else(|| "?".into()),
        unet: component(dir, "unet", "diffusion_pytorch_model")?,
        vae: component(dir, "vae", "diffusion_pytorch_model")?,
        text_encoder: component(dir, "text_encoder", "model")?,
        text_encoder_2: match sdxl {
            true => Some(component(dir, "text_encoder_2", "model")?),
            false => None,
        },
    })
}

impl fmt::Display for ModelInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "family:          {}", self.family)?;
        let [w, h] = self.native_size;
        writeln!(f, "native size:     {w}x{h} px")?;
        writeln!(
            f,
            "scheduler:       {} ({})",
            self.scheduler, self.prediction_type
        )?;
        let components = [
            ("unet", Some(&self.unet)),
            ("vae", Some(&self.vae)),
            ("text encoder", Some(&self.text_encoder)),
            ("text encoder 2", self.text_encoder_2.as_ref()),
        ];
        for (name, c) in components.iter().filter_map(|(n, c)| Some((n, (*c)?))) {
            let dtypes: Vec<String> = c.dtypes.keys().cloned().collect();
            writeln!(
                f,
                "{:<16} {:>7.1} M parameters, {} ({:.1} MB) {}",
                format!("{name}:"),
                c.parameters as f64 / 1e6,
                dtypes.join("+"),
                c.bytes as f64 / 1e6,
                c.file
            )?;
        }
        Ok(())
    }
}

/// The model's native picture size `(width, height)` in pixels: the UNet's sample size times
/// the VAE factor, else the VAE's own sample size, else 512 (SD 1.x).
pub fn native_size(dir: &ModelDir) -> Result<(usize, usize)> {
    let unet = dir.unet_config()?;
    let vae = dir.vae_config()?;
    let factor = 1 << (vae.block_out_channels.len().saturating_sub(1));
    Ok(match (unet.sample_size, vae.sample_size) {
        (Some(s), _) => {
            let (w, h) = s.wh();
            (w * factor, h * factor)
        }
        (None, Some(s)) => s.wh(),
        (None, None) => (512, 512),
    })
}
