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
        /// cpu | cuda | cuda:N | metal | auto
        #[arg(long, default_value = "auto")]
        device: String,
        #[arg(long, default_value_t = 2)]
        batch: usize,
        /// Latent side (64 = 512 px).
        #[arg(long, default_value_t = 64)]
        latent: usize,
        #[arg(long, default_value_t = 3)]
        repeat: usize,
        /// Also run the f32 UNet on the same input and print how far the output is from it.
        #[arg(long)]
        against_f32: bool,
    },
    /// Throughput of tessera's CPU kernels on SD 1.5's shapes, and which instruction set ran.
    Kernels,
    /// Time VAE decodes of a random latent.
    VaeDecode {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value = "f32")]
        dtype: String,
        /// cpu | cuda | cuda:N | metal | auto
        #[arg(long, default_value = "auto")]
        device: String,
        #[arg(long, default_value_t = 64)]
        latent: usize,
        /// Tile side in pixels (0: untiled).
        #[arg(long, default_value_t = 0)]
        tile: usize,
        /// MiB of the tiled VAE's whole-image stores kept in memory (the device's, on a GPU),
        /// the rest in host RAM (GPU) or files (CPU) [default: all in memory].
        #[arg(long, value_name = "MIB")]
        store_mib: Option<u64>,
        #[arg(long, default_value_t = 2)]
        repeat: usize,
    },
}

fn runtime(dtype: &str, device: &str) -> Result<Runtime> {
    let precision = tessera::choices::Precision::from_name(dtype).ok_or_else(|| {
        Error::input(
            "--dtype",
            None,
            format!("{dtype:?}"),
            "use f32, f16 or bf16",
        )
    })?;
    let choice = tessera::choices::DeviceChoice::from_name(device).ok_or_else(|| {
        Error::input(
            "--device",
            None,
            format!("{device:?}"),
            "use cpu, cuda, cuda:N, metal or auto",
        )
    })?;
    Runtime::open(choice, precision).map_err(|e| Error::input("--device", None, e.message, e.fix))
}

pub fn run(cmd: &BenchCommand) -> Result<()> {
    let report = match cmd {
        BenchCommand::Kernels => {
            use tessera::nn::kernels;
            println!(
                "kernels: {}, gemm {}, {} threads",
                kernels::cpu_path(),
                kernels::gemm::path(),
                kernels::threads()
            );
            for f in tessera::nn::kernels::bench::run() {
                println!(
                    "{:<44} {:>8.3} s {:>8.1} GFLOP/s",
                    f.what,
                    f.seconds,
                    f.gflop / f.seconds
                );
            }
            return Ok(());
        }
        BenchCommand::Unet {
            model,
            dtype,
            device,
            batch,
            latent,
            repeat,
            against_f32,
        } => bench::unet(
            &ModelDir::open(model)?,
            &runtime(dtype, device)?,
            *batch,
            *latent,
            *repeat,
            *against_f32,
        )?,
        BenchCommand::VaeDecode {
            model,
            dtype,
            device,
            latent,
            tile,
            store_mib,
            repeat,
        } => bench::vae_decode(
            &ModelDir::open(model)?,
            &runtime(dtype, device)?,
            *latent,
            (*tile > 0).then_some(*tile),
            store_mib.map(|m| m << 20),
            *repeat,
        )?,
    };
    print!("{report}");
    Ok(())
}
