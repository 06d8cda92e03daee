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
    Render(Box<RenderArgs>),
    /// Decode latents (tensor `latents`, as written by --save-latents) to a PNG with the tiled VAE.
    Decode {
        latents: PathBuf,
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Tile side in image pixels, a multiple of 8.
        #[arg(long, default_value_t = crate::spec::DEFAULT_VAE_TILE)]
        tile: usize,
        /// Accepted for compatibility with other tiled decoders. tessera's tiles read the exact
        /// neighbourhood every convolution needs and share whole-image GroupNorm statistics, so
        /// they need no overlap or blending; a value must still be a multiple of 8.
        #[arg(long, default_value_t = 0)]
        overlap: usize,
        /// Decode in one piece (memory grows with the image).
        #[arg(long)]
        no_tiling: bool,
    },
    /// Encode a picture to latents (tensor `latents`: the latent mean times the scaling factor).
    Encode {
        image: PathBuf,
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Tile side in image pixels, a multiple of 8.
        #[arg(long, default_value_t = crate::spec::DEFAULT_VAE_TILE)]
        tile: usize,
        /// Encode in one piece.
        #[arg(long)]
        no_tiling: bool,
    },
    /// Show the window grid, UNet evaluations and estimated peak memory of a spec, without
    /// running a model.
    Plan {
        spec: PathBuf,
        /// Diffusers model folder [default: the spec's `model`, else the bundled tiny model].
        #[arg(long)]
        model: Option<PathBuf>,
        /// Print JSON (`windows_per_step`, `unet_evaluations`, `memory`, `estimated_peak_bytes`,
        /// and under a budget `chosen`).
        #[arg(long)]
        json: bool,
        /// Fit the plan into this much memory, as `render --max-memory` would.
        #[arg(long, value_name = "SIZE")]
        max_memory: Option<String>,
        /// Plan with UNet weights streamed from disk.
        #[arg(long)]
        stream_weights: bool,
        /// MiB of attention scores alive at once [default: 256].
        #[arg(long, value_name = "MIB")]
        attention_mib: Option<usize>,
        /// VAE tile side in pixels (0: one piece) [default: 256].
        #[arg(long, value_name = "PX")]
        vae_tile: Option<usize>,
    },
    /// Measure the speed and memory of one component (figures for BENCHMARKS.md).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Inspect or synthesise model folders.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Check a render against its guide (fidelity, seams at window boundaries, per-window
    /// colour drift), or against a golden image (`--against`). Exit 0: pass, 1: fail, 2: bad
    /// input.
    Check(crate::check::CheckArgs),
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
    /// VAE tile side in pixels (multiple of 8; 0: the VAE runs in one piece) [default: 256].
    #[arg(long, value_name = "PX")]
    pub vae_tile: Option<usize>,
    /// Stream the UNet's weights from disk stage by stage instead of holding them (low RAM;
    /// bit-identical output, slower).
    #[arg(long)]
    pub stream_weights: bool,
    /// MiB of attention scores (and feed-forward state) alive at once [default: 256]; smaller
    /// saves memory at window size, at some speed.
    #[arg(long, value_name = "MIB")]
    pub attention_mib: Option<usize>,
    /// Fit the render into this much memory (e.g. 800M, 2G): tessera chooses weight streaming,
    /// attention chunking, VAE tile, window size and dtype, prints its choices, and refuses up
    /// front when the budget cannot be met.
    #[arg(long, value_name = "SIZE")]
    pub max_memory: Option<String>,
    /// After rendering, check the output against its guide picture (as `tessera check`, default
    /// thresholds); exit 1 if the check fails. Skipped when no guide was rendered.
    #[arg(long)]
    pub check: bool,
    /// Print the render report (output, plan, per-phase time and peak memory beside the
    /// estimate, model loads; with --check, the check report under `check`) as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Time UNet forwards on random inputs.
    Unet {
        #[arg(long)]
        model: PathBuf,
        /// f32 | f16
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
            vae_tile: self.vae_tile,
            stream_weights: self.stream_weights,
            attention_mib: self.attention_mib,
            max_memory: self.max_memory.clone(),
        }
    }
}

fn loads_line(loads: &std::collections::BTreeMap<&str, usize>) -> String {
    let parts: Vec<String> = loads.iter().map(|(m, n)| format!("{m} x{n}")).collect();
    parts.join(", ")
}

fn render_json(
    r: &crate::pipeline::RenderReport,
    check: Option<&crate::check::CheckReport>,
) -> String {
    let value = serde_json::json!({
        "output": r.output,
        "guide": r.guide,
        "width": r.plan.width,
        "height": r.plan.height,
        "scheduler": r.scheduler.name(),
        "windows_per_step": r.plan.windows_per_step,
        "unet_evaluations": r.plan.unet_evaluations,
        "phases": r.phases.phases,
        "estimate": r.plan.memory,
        "estimated_peak_bytes": r.plan.memory.peak(),
        "model_loads": r.loads,
        "check": check,
    });
    serde_json::to_string(&value).expect("serialisable")
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
            if let Some(guide) = &report.guide {
                eprintln!("guide: {}", guide.display());
            }
            eprint!("{}", report.phases);
            eprintln!("models loaded: {}", loads_line(&report.loads));
            eprintln!(
                "wrote {} ({}x{}, {}, {} windows per step, {} UNet evaluations)",
                report.output.display(),
                report.plan.width,
                report.plan.height,
                report.scheduler.name(),
                report.plan.windows_per_step,
                report.plan.unet_evaluations
            );
            let check = match args.check {
                true => crate::check::after_render(&report)?,
                false => None,
            };
            if args.json {
                println!("{}", render_json(&report, check.as_ref()));
            }
            if let Some(check) = &check {
                crate::check::conclude(check, args.json)?;
            }
            Ok(())
        }
        Command::Decode {
            latents,
            model,
            out,
            tile,
            overlap,
            no_tiling,
        } => {
            let dir = ModelDir::open(&model)?;
            check_px("--tile", tile, false)?;
            check_px("--overlap", overlap, true)?;
            let z = crate::output::load_tensor(&latents, "latents")?
                .to_dtype(candle_core::DType::F32)?;
            if z.rank() != 4 || z.dim(1)? != dir.vae_config()?.latent_channels {
                return Err(crate::Error::input(
                    &latents,
                    Some("latents"),
                    format!("shape {:?}", z.dims()),
                    "store latents of shape [1, channels, h, w] as written by --save-latents",
                ));
            }
            crate::progress::install_interrupt_handler();
            let tile = (!no_tiling).then_some(tile);
            let (_, _, h, w) = z.dims4()?;
            eprintln!(
                "decoding {}x{} px {}",
                8 * w,
                8 * h,
                tile.map_or("in one piece".into(), |t| format!("in tiles of {t} px"))
            );
            let image = crate::pipeline::decode(
                &dir,
                &z,
                candle_core::DType::F32,
                tile,
                &Progress { visible: true },
            )?;
            crate::output::save_png(&out, &crate::imageio::tensor_to_rgb(&image)?, &[])?;
            eprintln!(
                "wrote {} (peak RSS {})",
                out.display(),
                crate::memory::mib(crate::memory::peak_rss_bytes())
            );
            Ok(())
        }
        Command::Encode {
            image,
            model,
            out,
            tile,
            no_tiling,
        } => {
            let dir = ModelDir::open(&model)?;
            check_px("--tile", tile, false)?;
            let picture = image::open(&image).map_err(|e| {
                crate::Error::input(
                    &image,
                    None,
                    format!("cannot read the picture: {e}"),
                    "give a PNG or JPEG file",
                )
            })?;
            let (w, h) = (picture.width() as usize, picture.height() as usize);
            if !w.is_multiple_of(8) || !h.is_multiple_of(8) {
                return Err(crate::Error::input(
                    &image,
                    None,
                    format!("{w}x{h} is not a multiple of 8"),
                    "crop or resize the picture to multiples of 8 pixels",
                ));
            }
            let x = crate::imageio::rgb_to_tensor(&picture.to_rgb8(), (w, h))?;
            let latents = crate::pipeline::encode_mean(&dir, &x, (!no_tiling).then_some(tile))?;
            crate::output::save_tensors(&out, &[("latents", &latents)])?;
            eprintln!("wrote {} {:?}", out.display(), latents.dims());
            Ok(())
        }
        Command::Plan {
            spec,
            model,
            json,
            max_memory,
            stream_weights,
            attention_mib,
            vae_tile,
        } => {
            let file = SpecFile::load(&spec)?;
            let overrides = Overrides {
                model,
                max_memory,
                stream_weights,
                attention_mib,
                vae_tile,
                ..Default::default()
            };
            let settings = spec::resolve(Some((&spec, file)), &overrides)?;
            let dir = ModelDir::open(&settings.model)?;
            let facts = crate::pipeline::model_facts(&dir)?;
            let (fitted, plan, chosen) = crate::budget::fit(&settings, &facts)?;
            if json {
                let mut value = serde_json::to_value(&plan).expect("serialisable");
                value["chosen"] = serde_json::json!(chosen);
                value["model_memory"] = serde_json::to_value(&facts.memory).expect("serialisable");
                value["stream_weights"] = fitted.stream_weights.into();
                value["attention_mib"] = (fitted.attention_budget >> 20).into();
                value["vae_tile"] = fitted.tiles.vae.unwrap_or(0).into();
                value["dtype"] = format!("{:?}", fitted.dtype).to_lowercase().into();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&value).expect("serialisable")
                );
            } else {
                print!("{plan}");
                println!(
                    "memory settings:   {}weights, attention chunks of {} MiB, VAE {}, {}",
                    if fitted.stream_weights {
                        "streamed "
                    } else {
                        "resident "
                    },
                    fitted.attention_budget >> 20,
                    match fitted.tiles.vae {
                        Some(t) => format!("tiles of {t} px"),
                        None => "in one piece".into(),
                    },
                    format!("{:?}", fitted.dtype).to_lowercase()
                );
                if let Some(budget) = fitted.max_memory {
                    println!(
                        "memory budget:     {} ({})",
                        crate::memory::mib(budget),
                        crate::budget::describe_choices(&chosen)
                    );
                }
            }
            Ok(())
        }
        Command::Bench(BenchCommand::Unet {
            model,
            dtype,
            batch,
            latent,
            repeat,
        }) => {
            let dtype = bench_dtype(&dtype)?;
            crate::bench::unet(&ModelDir::open(&model)?, dtype, batch, latent, repeat)
        }
        Command::Bench(BenchCommand::VaeDecode {
            model,
            dtype,
            latent,
            tile,
            repeat,
        }) => {
            let dtype = bench_dtype(&dtype)?;
            let tile = (tile > 0).then_some(tile);
            crate::bench::vae_decode(&ModelDir::open(&model)?, dtype, latent, tile, repeat)
        }
        Command::Model(ModelCommand::Info { dir, json }) => {
            let info = info::inspect(&ModelDir::open(&dir)?)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&info).expect("serialisable")
                );
            } else {
                print!("{info}");
            }
            Ok(())
        }
        Command::Model(ModelCommand::Synth {
            arch,
            out,
            seed,
            dtype,
        }) => {
            synth::synthesize(&arch, &out, seed, &dtype)?;
            eprintln!("wrote a random-weight {arch} model to {}", out.display());
            Ok(())
        }
        Command::Check(args) => crate::check::run(&args),
    }
}

fn bench_dtype(name: &str) -> Result<candle_core::DType> {
    crate::model::parse_dtype(name).ok_or_else(|| {
        crate::Error::input("--dtype", None, format!("{name:?}"), "use f32, f16 or bf16")
    })
}

fn check_px(flag: &str, v: usize, allow_zero: bool) -> Result<()> {
    if !v.is_multiple_of(8) || (v == 0 && !allow_zero) {
        return Err(crate::Error::input(
            flag,
            None,
            format!("{v} is not a multiple of 8"),
            "use a multiple of 8 pixels, e.g. 256",
        ));
    }
    Ok(())
}
