//! `tessera model info` and `tessera model synth`.

use clap::Subcommand;
use std::path::PathBuf;
use tessera::models::{info, synth, ModelDir};
use tessera::Result;

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Family, native size, parameter counts and dtypes of a diffusers model folder or a
    /// single-file checkpoint (with --config).
    Info {
        dir: PathBuf,
        /// For a single-file checkpoint: the diffusers folder whose configs to use.
        #[arg(long, value_name = "DIR")]
        config: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Write a model with random weights in the diffusers layout (for tests and benchmarks).
    Synth {
        /// tiny | sd15 | sd21
        #[arg(long)]
        arch: String,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// f32 | f16
        #[arg(long, default_value = "f32")]
        dtype: String,
    },
}

pub fn run(cmd: &ModelCommand) -> Result<()> {
    match cmd {
        ModelCommand::Info { dir, config, json } => {
            let info = info::inspect(&ModelDir::open_model(dir, config.as_deref())?)?;
            super::print_report(&info, *json);
            // Where a render with no --device would run it (stderr: stdout may be JSON).
            let auto = tessera::nn::Runtime::open(Default::default(), Default::default());
            if let Ok(rt) = auto {
                eprintln!(
                    "device:          {} (renders' default; --device to choose)",
                    rt.device_name()
                );
            }
        }
        ModelCommand::Synth {
            arch,
            out,
            seed,
            dtype,
        } => {
            synth::synthesize(arch, out, *seed, dtype)?;
            eprintln!("wrote a random-weight {arch} model to {}", out.display());
        }
    }
    Ok(())
}
