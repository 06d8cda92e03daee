//! Command-line interface (`tessera --help`). `main.rs` only calls [`run`].

use crate::model::{info, ModelDir};
use crate::progress::Progress;
use crate::spec::{self, Overrides, SpecFile};
use crate::{synth, Result};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "tessera",
    version,
    about = "Render high-resolution posters from TOML canvas specs with latent diffusion models.",
    long_about = "Render high-resolution posters from TOML canvas specs with latent diffusion \
                  models (Stable Diffusion 1.x / 2.x / Turbo in the diffusers folder layout), \
                  tile by tile, at the memory cost of one tile.\n\n\
                  Start with:  tessera render canvases/demo.toml"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Render a canvas spec (or a one-window canvas from flags alone) to a PNG.
    Render(RenderArgs),
    /// Inspect or synthesise model folders.
    #[command(subcommand)]
    Model(ModelCommand),
}

#[derive(Debug, Args)]
pub struct RenderArgs {
    /// Canvas spec (TOML). Without one, the flags alone define a one-window canvas.
    pub spec: Option<PathBuf>,
    /// Diffusers model folder [default: the spec's `model`, else the bundled tiny model].
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Output PNG [default: the spec's path with .png, else tessera.png].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Prompt (overrides `[prompt] text`).
    #[arg(long)]
    pub prompt: Option<String>,
    /// Negative prompt (overrides `[prompt] negative`).
    #[arg(long)]
    pub negative: Option<String>,
    /// Canvas width in pixels, a multiple of 8 [default: the model's native size].
    #[arg(long)]
    pub width: Option<usize>,
    /// Canvas height in pixels, a multiple of 8 [default: the model's native size].
    #[arg(long)]
    pub height: Option<usize>,
    /// Denoising steps [default: 30].
    #[arg(long)]
    pub steps: Option<usize>,
    /// Classifier-free guidance scale [default: 7.5]; <= 1 disables the unconditional pass.
    #[arg(long)]
    pub guidance: Option<f64>,
    /// ddim | euler | euler-a | dpm++2m [default: the model folder's scheduler].
    #[arg(long)]
    pub scheduler: Option<String>,
    /// Seed of the portable noise generator [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// f32 | f16 | bf16 [default: f32].
    #[arg(long)]
    pub dtype: Option<String>,
    /// Use the tensor `noise` [1,4,H/8,W/8] of this safetensors file as initial noise.
    #[arg(long, value_name = "FILE")]
    pub init_noise: Option<PathBuf>,
    /// Write the final latents (tensor `latents`, before VAE scaling) to this safetensors file.
    #[arg(long, value_name = "FILE")]
    pub save_latents: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Family, native size, parameter counts and dtypes of a diffusers model folder.
    Info {
        dir: PathBuf,
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

impl RenderArgs {
    fn overrides(&self) -> Overrides {
        Overrides {
            model: self.model.clone(),
            out: self.out.clone(),
            prompt: self.prompt.clone(),
            negative: self.negative.clone(),
            width: self.width,
            height: self.height,
            steps: self.steps,
            guidance: self.guidance,
            scheduler: self.scheduler.clone(),
            seed: self.seed,
            dtype: self.dtype.clone(),
            init_noise: self.init_noise.clone(),
            save_latents: self.save_latents.clone(),
        }
    }
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Render(args) => {
            let spec = match &args.spec {
                Some(path) => Some((path.as_path(), SpecFile::load(path)?)),
                None => None,
            };
            let settings = spec::resolve(spec, &args.overrides())?;
            crate::progress::install_interrupt_handler();
            let progress = Progress { visible: true };
            let report = crate::pipeline::render(&settings, progress)?;
            eprintln!(
                "wrote {} ({}x{}, {}, {} UNet evaluations)",
                report.output.display(),
                report.width,
                report.height,
                report.scheduler.name(),
                report.unet_evaluations
            );
            Ok(())
        }
        Command::Model(ModelCommand::Info { dir, json }) => {
            let info = info::inspect(&ModelDir::open(&dir)?)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&info).expect("serialisable"));
            } else {
                print!("{info}");
            }
            Ok(())
        }
        Command::Model(ModelCommand::Synth { arch, out, seed, dtype }) => {
            synth::synthesize(&arch, &out, seed, &dtype)?;
            eprintln!("wrote a random-weight {arch} model to {}", out.display());
            Ok(())
        }
    }
}
