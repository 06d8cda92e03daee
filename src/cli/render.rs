//! `tessera render`: a spec (or flags alone) to a PNG, its report, and optionally its check.

use super::batch::{self, Shard};
use crate::progress::{install_interrupt_handler, Terminal};
use clap::Args;
use std::path::{Path, PathBuf};
use tessera::check::CheckReport;
use tessera::checking;
use tessera::spec::{self, Overrides, SpecFile};
use tessera::{Error, RenderReport, Result, Session};

#[derive(Debug, Args)]
pub struct RenderArgs {
    /// Canvas specs (TOML), folders of specs, or `-` for a list of spec paths on stdin; several
    /// make a batch. Without any, the flags alone define a one-window canvas.
    pub specs: Vec<PathBuf>,
    /// Continue an interrupted render from the checkpoint beside its output (a checkpoint of
    /// another render is then an error, exit 2) and skip outputs already complete.
    #[arg(long)]
    pub resume: bool,
    /// Write `<output stem>.preview.png` every N canvas steps (a cheap latent projection).
    #[arg(long, value_name = "N")]
    pub preview_every: Option<usize>,
    /// Render only every N-th spec of the sorted batch, from the I-th (0-based): one task of
    /// a job array (e.g. `--shard $JOB_COMPLETION_INDEX/4`).
    #[arg(long, value_name = "I/N")]
    pub shard: Option<Shard>,
    /// Diffusers model folder or single-file .safetensors checkpoint [default: the spec's
    /// `model`, else the bundled tiny model].
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// For a single-file checkpoint: a diffusers folder whose configs, tokenizer and scheduler
    /// to use (as diffusers' `from_single_file(config=...)`).
    #[arg(long, value_name = "DIR")]
    pub config: Option<PathBuf>,
    /// A LoRA file merged into the weights, with an optional weight (default 1); repeatable.
    #[arg(long, value_name = "FILE[:WEIGHT]")]
    pub lora: Vec<String>,
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
    /// ddim | euler | euler-a | dpm++2m | euler-karras | euler-a-karras | dpm++2m-karras
    /// [default: the model folder's scheduler].
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
            config: self.config.clone(),
            loras: self.lora.clone(),
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
            preview_every: self.preview_every,
            resume: self.resume,
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
    if loads.is_empty() {
        return "none (all kept from the previous render of the batch)".into();
    }
    let parts: Vec<String> = loads.iter().map(|(m, n)| format!("{m} x{n}")).collect();
    parts.join(", ")
}

fn render_json(r: &RenderReport, check: Option<&CheckReport>) -> serde_json::Value {
    serde_json::json!({
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
    })
}

pub fn run(args: &RenderArgs) -> Result<()> {
    let one_file = match args.specs.as_slice() {
        [] => true,
        [p] => p.as_os_str() != "-" && !p.is_dir() && !has_variations(args, p),
        _ => false,
    };
    if one_file && args.shard.is_none() {
        return run_one(args);
    }
    run_batch(args)
}

fn has_variations(args: &RenderArgs, spec: &Path) -> bool {
    let spec = SpecFile::load(spec).ok();
    args.seed.is_none() && spec.and_then(|s| s.variation_seeds()).is_some()
}

/// One spec (or flags alone): errors are the command's exit status.
fn run_one(args: &RenderArgs) -> Result<()> {
    let spec = args.specs.first().map(PathBuf::as_path);
    let Some((report, check)) = render_one(args, spec, None, &mut Session::default())? else {
        return Ok(());
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

/// The settings of one spec (one of its variations, with `seed`) and the flags.
fn settings_for(
    args: &RenderArgs,
    path: Option<&Path>,
    seed: Option<u64>,
) -> Result<tessera::spec::Settings> {
    let spec = match path {
        Some(path) => Some((path, SpecFile::load(path)?)),
        None => None,
    };
    let mut overrides = args.overrides();
    if let Some(seed) = seed {
        let output = spec::resolve(spec.clone(), &overrides)?.output;
        overrides.out = Some(batch::variation_output(&output, seed));
        overrides.seed = Some(seed);
    }
    spec::resolve(spec, &overrides)
}

/// Render one spec (one of its variations, with `seed`) with its summary on stderr, sharing
/// models through `session`; `None` when `--resume` finds it complete.
fn render_one(
    args: &RenderArgs,
    path: Option<&Path>,
    seed: Option<u64>,
    session: &mut Session,
) -> Result<Option<(RenderReport, Option<CheckReport>)>> {
    let settings = settings_for(args, path, seed)?;
    if args.resume && batch::is_complete(&settings.output) {
        eprintln!("{}: already complete, skipped", settings.output.display());
        return Ok(None);
    }
    install_interrupt_handler();
    let report = match tessera::render_in(session, &settings, &Terminal::default()) {
        Err(Error::Interrupted) => {
            let ckpt = tessera::resume::path_for(&settings.output);
            if ckpt.exists() {
                let spec = path
                    .map(|p| format!(" {}", p.display()))
                    .unwrap_or_default();
                eprintln!(
                    "interrupted: the progress is kept in {}; continue with `tessera render{spec} \
                     --resume` (and the same flags)",
                    ckpt.display()
                );
            }
            return Err(Error::Interrupted);
        }
        other => other?,
    };
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
    Ok(Some((report, check)))
}

/// Several specs: each rendered (or skipped, or failed) in turn; the exit status is the number
/// of failed specs (at most 100), 130 when interrupted.
fn run_batch(args: &RenderArgs) -> Result<()> {
    if args.out.is_some() {
        return Err(Error::input(
            "<command line>",
            Some("--out"),
            "one output path for a batch of specs",
            "leave --out out: each spec names its output (`[output] path`, else the spec's name)",
        ));
    }
    let jobs = batch::jobs(&args.specs, args.seed.is_some(), args.shard)?;
    let (mut rendered, mut skipped, mut failed) = (0, 0, 0);
    // Consecutive renders of one model share it: the session keeps what the next render
    // will use (and only that) from one render to the next.
    let mut session = Session::default();
    for (i, job) in jobs.iter().enumerate() {
        session.expect_next(next_render(args, &jobs[i + 1..]).as_ref());
        let path = &job.spec;
        let seed = job.seed.map(|s| format!(" (seed {s})")).unwrap_or_default();
        eprintln!("== {}{seed}", path.display());
        let mut line = serde_json::json!({ "spec": path, "seed": job.seed });
        match render_one(args, Some(path), job.seed, &mut session) {
            Ok(Some((report, check))) if check.as_ref().is_none_or(|c| c.pass) => {
                rendered += 1;
                line["status"] = "rendered".into();
                line["report"] = render_json(&report, check.as_ref());
            }
            Ok(Some((report, check))) => {
                failed += 1;
                eprintln!("error: {}: the check failed", path.display());
                line["status"] = "check failed".into();
                line["report"] = render_json(&report, check.as_ref());
            }
            Ok(None) => {
                skipped += 1;
                line["status"] = "skipped".into();
            }
            Err(Error::Interrupted) => return Err(Error::Interrupted),
            Err(e) => {
                failed += 1;
                eprintln!("error: {e}");
                line["status"] = "failed".into();
                line["error"] = e.to_string().into();
                line["exit_code"] = e.exit_code().into();
            }
        }
        line["models_held"] = session.held().into();
        tessera::report::return_freed_memory();
        line["rss_bytes"] = batch::rss_bytes().into();
        if args.json {
            println!("{line}");
        }
    }
    eprintln!(
        "batch: {} renders: {rendered} rendered, {skipped} already complete, {failed} failed",
        jobs.len()
    );
    if failed > 0 {
        std::process::exit(failed.min(100));
    }
    Ok(())
}

/// The settings of the next job that will be rendered: the first that resolves and is not
/// skipped as complete (a spec that fails to resolve loads nothing).
fn next_render(args: &RenderArgs, jobs: &[batch::Job]) -> Option<tessera::spec::Settings> {
    jobs.iter()
        .filter_map(|job| settings_for(args, Some(&job.spec), job.seed).ok())
        .find(|s| !(args.resume && batch::is_complete(&s.output)))
}
