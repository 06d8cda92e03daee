//! `tessera bench`: speed and memory figures of one component (for BENCHMARKS.md).

use clap::Subcommand;
use std::path::PathBuf;
use tessera::models::ModelDir;
use tessera::nn::Runtime;
use tessera::{bench, Error, Result};

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Time UNet forwards on random inputs.
    Unet {
        #[arg(long)]
        model: PathBuf,
        /// f32 | f16 | bf16
        #[arg(long, default_value = "f32")]
        dtype: String,
        #[arg(long, default_value_t = 2)]
        batch: usize,
        /// Latent side (64 = 512 px).
        #[arg(long, default_value_t = 64)]
        latent: usize,
        #[arg(long, default_value_t = 3)]
        repeat: usize,
    },
    /// Time VAE decodes of a random latent.
    VaeDecode {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value = "f32")]
        dtype: String,
        #[arg(long, default_value_t = 64)]
        latent: usize,
        /// Tile side in pixels (0: untiled).
        #[arg(long, default_value_t = 0)]
        tile: usize,
        #[arg(long, default_value_t = 2)]
        repeat: usize,
    },
}

fn runtime(dtype: &str) -> Result<Runtime> {
    let precision = tessera::choices::Precision::from_name(dtype).ok_or_else(|| {
        Error::input(
            "--dtype",
            None,
            format!("{dtype:?}"),
            "use f32, f16 or bf16",
        )
    })?;
    Ok(Runtime::default().with_precision(precision))
}

pub fn run(cmd: &BenchCommand) -> Result<()> {
    let report = match cmd {
        BenchCommand::Unet {
            model,
            dtype,
            batch,
            latent,
            repeat,
        } => bench::unet(
            &ModelDir::open(model)?,
            &runtime(dtype)?,
            *batch,
            *latent,
            *repeat,
        )?,
        BenchCommand::VaeDecode {
            model,
            dtype,
            latent,
            tile,
            repeat,
        } => bench::vae_decode(
            &ModelDir::open(model)?,
            &runtime(dtype)?,
            *latent,
            (*tile > 0).then_some(*tile),
            *repeat,
        )?,
    };
    print!("{report}");
    Ok(())
}
