//! `tessera bench`: speed and memory figures of one component, printed for BENCHMARKS.md.
//! Timings are wall-clock seconds after one warm-up run; compare them as ratios in one run.

use crate::memory;
use crate::model::ModelDir;
use crate::noise::{NoiseSource, SeededNoise};
use crate::Result;
use candle_core::{DType, Tensor};
use std::time::Instant;

/// Time `f` `repeat` times, after one warm-up when `repeat > 1`; returns seconds per run.
fn time_runs(repeat: usize, mut f: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    if repeat > 1 {
        f()?;
    }
    (0..repeat)
        .map(|_| {
            let t = Instant::now();
            f()?;
            Ok(t.elapsed().as_secs_f64())
        })
        .collect()
}

fn report(what: &str, times: &[f64]) {
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    let min = times.iter().cloned().fold(f64::INFINITY, f64::min);
    println!(
        "{what}: mean {mean:.3} s, min {min:.3} s over {} runs; peak RSS {}",
        times.len(),
        memory::mib(memory::peak_rss_bytes())
    );
}

/// One UNet forward on a (batch, 4, latent, latent) input with random text embeddings.
pub fn unet(
    dir: &ModelDir,
    dtype: DType,
    batch: usize,
    latent: usize,
    repeat: usize,
) -> Result<()> {
    let cfg = dir.unet_config()?;
    let unet = dir.load_unet(dtype)?;
    let mut rng = SeededNoise::new(0);
    let x = rng
        .noise(&(batch, 4, latent, latent).into())?
        .to_dtype(dtype)?;
    let emb = rng
        .noise(&(batch, 77, cfg.cross_attention_dim).into())?
        .to_dtype(dtype)?;
    println!(
        "loaded UNet ({dtype:?}); RSS {}",
        memory::mib(memory::rss_bytes())
    );
    let times = time_runs(repeat, || {
        unet.forward(&x, 500.0, &emb)?;
        Ok(())
    })?;
    report(
        &format!("UNet forward ({batch},4,{latent},{latent}) {dtype:?}"),
        &times,
    );
    Ok(())
}

/// VAE decodes of a random (1, 4, latent, latent) latent, through the pipeline's decode
/// (tiled when the image is larger than `tile` pixels; the decoder is loaded each run).
pub fn vae_decode(
    dir: &ModelDir,
    dtype: DType,
    latent: usize,
    tile: Option<usize>,
    repeat: usize,
) -> Result<()> {
    let z: Tensor = (SeededNoise::new(0).noise(&(1, 4, latent, latent).into())? * 0.18215)?;
    let times = time_runs(repeat, || {
        crate::pipeline::decode(dir, &z, dtype, tile, &crate::progress::Progress::default())?;
        Ok(())
    })?;
    let how = tile.map_or("untiled".to_string(), |t| format!("{t} px tiles"));
    report(
        &format!(
            "VAE decode (1,4,{latent},{latent}) -> {0}x{0} px, {how}, {dtype:?}",
            latent * 8
        ),
        &times,
    );
    Ok(())
}
