//! `tessera bench`: speed and memory figures of one component, for BENCHMARKS.md. Timings are
//! wall-clock seconds after one warm-up run; compare them as ratios in one run.

use crate::report::{mib, peak_rss_bytes, rss_bytes};
use candle_core::{DType, Tensor};
use std::time::Instant;
use tessera_core::{Quiet, Result};
use tessera_diffusion::autoencoder::Autoencoder;
use tessera_diffusion::noise::{NoiseSource, SeededNoise};
use tessera_diffusion::{NoisePredictor, Placement};
use tessera_models::ModelDir;
use tessera_nn::Runtime;

/// Timings of one benchmark.
#[derive(Debug, Clone)]
pub struct BenchReport {
    pub what: String,
    /// Seconds per run.
    pub times: Vec<f64>,
    pub peak_rss_bytes: u64,
    /// Peak device memory in use during the runs, as the driver counts it (GPUs only).
    pub peak_device_bytes: Option<u64>,
    /// Lines about the setup (what was loaded, its memory).
    pub notes: Vec<String>,
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for n in &self.notes {
            writeln!(f, "{n}")?;
        }
        let mean = self.times.iter().sum::<f64>() / self.times.len() as f64;
        let min = self.times.iter().cloned().fold(f64::INFINITY, f64::min);
        write!(
            f,
            "{}: mean {mean:.3} s, min {min:.3} s over {} runs; peak RSS {}",
            self.what,
            self.times.len(),
            mib(self.peak_rss_bytes)
        )?;
        match self.peak_device_bytes {
            Some(bytes) => writeln!(f, "; device peak {}", mib(bytes)),
            None => writeln!(f),
        }
    }
}

/// Time `f` `repeat` times, after one warm-up when `repeat > 1`; returns seconds per run and,
/// on a GPU, the device's peak memory in use. A GPU's queue is drained before each clock
/// reading (its work is asynchronous).
fn time_runs(
    rt: &Runtime,
    repeat: usize,
    f: impl FnMut() -> Result<()>,
) -> Result<(Vec<f64>, Option<u64>)> {
    let watch = tessera_nn::device_memory::DeviceMemoryWatch::start(rt);
    let times = timed(rt, repeat, f)?;
    Ok((times, watch.map(|w| w.finish())))
}

fn timed(rt: &Runtime, repeat: usize, mut f: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    let mut run = || -> Result<()> {
        f()?;
        Ok(rt.device.synchronize()?)
    };
    if repeat > 1 {
        run()?;
    }
    (0..repeat)
        .map(|_| {
            let t = Instant::now();
            run()?;
            Ok(t.elapsed().as_secs_f64())
        })
        .collect()
}

/// One UNet forward on a (batch, 4, latent, latent) input with random text embeddings;
/// `against_f32`: the output also compared with the f32 UNet's on the same input.
pub fn unet(
    dir: &ModelDir,
    rt: &Runtime,
    batch: usize,
    latent: usize,
    repeat: usize,
    against_f32: bool,
) -> Result<BenchReport> {
    let cfg = dir.unet_config()?;
    let dtype = rt.conv_dtype();
    let unet = dir.load_unet(rt, rt.conv_weight_dtype())?;
    let mut rng = SeededNoise::new(0);
    let x = rt.to_device(
        &rng.noise(&(batch, 4, latent, latent).into())?
            .to_dtype(dtype)?,
    )?;
    let emb = rng
        .noise(&(batch, 77, cfg.cross_attention_dim).into())?
        .to_dtype(dtype)?;
    let emb = rt.to_device(&emb)?;
    // SDXL's pooled embeddings: what add_embedding takes besides the six time_ids sinusoids.
    let pooled = match cfg.text_time_dims() {
        Some((time_dim, input_dim)) => {
            let p = rng.noise(&(batch, input_dim - 6 * time_dim).into())?;
            Some(rt.to_device(&p)?)
        }
        None => None,
    };
    let at = Placement::whole((8 * latent, 8 * latent));
    let weights = rt.conv_weight_dtype();
    let mut notes = vec![format!(
        "loaded UNet (weights {weights:?}, activations {dtype:?}{}); RSS {}",
        rt.conv_note().map_or(String::new(), |n| format!("; {n}")),
        mib(rss_bytes())
    )];
    let mut out = None;
    let (times, peak_device_bytes) = time_runs(rt, repeat, || {
        out = Some(unet.predict(&x, 500.0, &emb, pooled.as_ref(), std::slice::from_ref(&at))?);
        Ok(())
    })?;
    let peak_rss = peak_rss_bytes();
    if let (true, Some(out)) = (against_f32, out) {
        drop(unet);
        let f32_rt = rt.with_precision(tessera_core::choices::Precision::F32);
        let reference = dir.load_unet(&f32_rt, DType::F32)?;
        let wide = |t: &Tensor| t.to_dtype(DType::F32);
        let want = reference.predict(
            &wide(&x)?,
            500.0,
            &wide(&emb)?,
            pooled.as_ref().map(wide).transpose()?.as_ref(),
            std::slice::from_ref(&at),
        )?;
        let diff = (wide(&out)? - &want)?;
        let norm = |t: &Tensor| -> Result<f64> {
            Ok(t.sqr()?.sum_all()?.to_scalar::<f32>()?.sqrt() as f64)
        };
        let max =
            |t: &Tensor| -> Result<f64> { Ok(t.abs()?.max_all()?.to_scalar::<f32>()? as f64) };
        notes.push(format!(
            "against the f32 UNet: relative L2 {:.3e}, max |diff| / max |f32| {:.3e}",
            norm(&diff)? / norm(&want)?,
            max(&diff)? / max(&want)?
        ));
    }
    Ok(BenchReport {
        what: format!("UNet forward ({batch},4,{latent},{latent}) {weights:?} weights"),
        times,
        peak_rss_bytes: peak_rss,
        peak_device_bytes,
        notes,
    })
}

/// VAE decodes of a random (1, 4, latent, latent) latent, as a render decodes (tiled when the
/// image is larger than `tile` pixels; the decoder is loaded by the first run, which is the
/// untimed warm-up when `repeat > 1`). `stores`: bytes of the tiled VAE's whole-image stores
/// kept in memory (the device's, on a GPU), the rest in host RAM or files; `None`: all.
pub fn vae_decode(
    dir: &ModelDir,
    rt: &Runtime,
    latent: usize,
    tile: Option<usize>,
    stores: Option<u64>,
    repeat: usize,
) -> Result<BenchReport> {
    let z: Tensor = (SeededNoise::new(0).noise(&(1, 4, latent, latent).into())? * 0.18215)?;
    let z = rt.to_device(&z)?;
    let mut vae = Autoencoder::new(dir, rt, tile).with_scratch(stores);
    let (times, peak_device_bytes) = time_runs(rt, repeat, || {
        vae.decode(&z, &Quiet)?;
        Ok(())
    })?;
    let how = tile.map_or("untiled".to_string(), |t| format!("{t} px tiles"));
    let dtype: DType = rt.vae_dtype(dir.vae_config()?.force_upcast);
    let weights = match dtype {
        DType::F32 => rt.vae_f32_weight_dtype(),
        other => other,
    };
    Ok(BenchReport {
        what: format!(
            "VAE decode (1,4,{latent},{latent}) -> {0}x{0} px, {how}, {dtype:?} ({weights:?} weights)",
            latent * 8
        ),
        times,
        peak_rss_bytes: peak_rss_bytes(),
        peak_device_bytes,
        notes: Vec::new(),
    })
}
