//! `tessera render`: a spec (or flags alone) to a PNG, its report, and optionally its check.

use crate::progress::{install_interrupt_handler, Terminal};
use clap::Args;
use std::path::PathBuf;
use tessera::checking;
use tessera::spec::{self, Overrides, SpecFile};
use tessera::{RenderReport, Result};

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
    /// cpu | cuda | cuda:N | metal [default: the first GPU this build supports, else the CPU].
    #[arg(long)]
    pub device: Option<String>,
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
    /// SDXL: the `original_size` a one-window render is conditioned on [default: its size].
    #[arg(long, value_name = "WxH", value_parser = parse_size)]
    pub original_size: Option<[usize; 2]>,
    /// SDXL: the crop offset a one-window render is conditioned on, in pixels [default: 0,0].
    #[arg(long, value_name = "X,Y", value_parser = parse_offset)]
    pub crop: Option<[usize; 2]>,
    /// SDXL on a canvas: condition every window as a whole picture of its own size instead of
    /// telling it where it sits in the canvas.
    #[arg(long)]
    pub no_window_crops: bool,
    /// After rendering, check the output against its guide picture (as `tessera check`, default
    /// thresholds); exit 1 if the check fails. Skipped when no guide was rendered.
    #[arg(long)]
    pub check: bool,
    /// Print the render report (output, plan, per-phase time and peak memory beside the
    /// estimate, model loads; with --check, the check report under `check`) as JSON on stdout.
    #[arg(long)]
    pub json: bool,
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
            device: self.device.clone(),
            init_noise: self.init_noise.clone(),
            save_latents: self.save_latents.clone(),
            vae_tile: self.vae_tile,
            stream_weights: self.stream_weights,
            attention_mib: self.attention_mib,
            max_memory: self.max_memory.clone(),
            original_size: self.original_size,
            crop: self.crop,
            no_window_crops: self.no_window_crops,
        }
    }
}

fn parse_pair(text: &str, sep: char, form: &str) -> std::result::Result<[usize; 2], String> {
    let parse = |v: &str| v.trim().parse::<usize>().ok();
    match text.split_once(sep).map(|(a, b)| (parse(a), parse(b))) {
        Some((Some(a), Some(b))) => Ok([a, b]),
        _ => Err(format!(
            "{text:?} is not {form} (two whole numbers of pixels)"
        )),
    }
}

fn parse_size(text: &str) -> std::result::Result<[usize; 2], String> {
    parse_pair(text, 'x', "WxH, e.g. 1024x1024")
}

fn parse_offset(text: &str) -> std::result::Result<[usize; 2], String> {
    parse_pair(text, ',', "X,Y, e.g. 0,256")
}

fn loads_line(loads: &std::collections::BTreeMap<&str, usize>) -> String {
    let parts: Vec<String> = loads.iter().map(|(m, n)| format!("{m} x{n}")).collect();
    parts.join(", ")
}

fn render_json(r: &RenderReport, check: Option<&tessera::check::CheckReport>) -> String {
    let value = serde_json::json!({
        "output": r.output,
        "guide": r.guide,
        "width": r.plan.width,
        "height": r.plan.height,
        "scheduler": r.scheduler.name(),
        "device": r.device,
        "windows_per_step": r.plan.windows_per_step,
        "unet_evaluations": r.plan.unet_evaluations,
        "phases": r.phases.phases,
        "estimate": r.estimate,
        "estimated_peak_bytes": r.estimate.peak(),
        "model_loads": r.loads,
        "check": check,
    });
    serde_json::to_string(&value).expect("serialisable")
}

pub fn run(args: &RenderArgs) -> Result<()> {
    let spec = match &args.spec {
        Some(path) => Some((path.as_path(), SpecFile::load(path)?)),
        None => None,
    };
    let settings = spec::resolve(spec, &args.overrides())?;
    install_interrupt_handler();
    let report = tessera::render(&settings, &Terminal::default())?;
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
        true => {
            let check = checking::after_render(&report)?;
            if check.is_none() {
                eprintln!(
                    "check: skipped: this render made no guide picture (no [guide] in the spec, \
                     or the guide came from `guide.image`), so there is nothing to \
                     downscale-compare with"
                );
            }
            check
        }
        false => None,
    };
    if args.json {
        println!("{}", render_json(&report, check.as_ref()));
    }
    if let Some(check) = &check {
        if !args.json {
            super::print_report(check, false);
        }
        checking::verdict(check.pass, &check.failures)?;
    }
    Ok(())
}
