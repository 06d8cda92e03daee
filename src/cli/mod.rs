//! The command line (`tessera --help`): one file per command, each turning its flags into a
//! library call and the result into text and an exit status. `main.rs` only calls [`run`].

mod batch;
mod bench;
mod check;
mod model;
mod plan;
mod render;
mod vae;

use clap::{Parser, Subcommand};
use tessera::Result;

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
    Render(Box<render::RenderArgs>),
    /// Decode latents (tensor `latents`, as written by --save-latents) to a PNG with the tiled VAE.
    Decode(vae::DecodeArgs),
    /// Encode a picture to latents (tensor `latents`: the latent mean times the scaling factor).
    Encode(vae::EncodeArgs),
    /// Show the window grid, UNet evaluations and estimated peak memory of a spec, without
    /// running a model.
    Plan(plan::PlanArgs),
    /// Measure the speed and memory of one component (figures for BENCHMARKS.md).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Inspect or synthesise model folders.
    #[command(subcommand)]
    Model(model::ModelCommand),
    /// Check a render against its guide (fidelity, seams at window boundaries, per-window
    /// colour drift), or against a golden image (`--against`). Exit 0: pass, 1: fail, 2: bad
    /// input.
    Check(check::CheckArgs),
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Render(args) => render::run(&args),
        Command::Decode(args) => vae::decode(&args),
        Command::Encode(args) => vae::encode(&args),
        Command::Plan(args) => plan::run(&args),
        Command::Bench(cmd) => bench::run(&cmd),
        Command::Model(cmd) => model::run(&cmd),
        Command::Check(args) => check::run(&args),
    }
}

/// A report as JSON (pretty) or as its table.
fn print_report<R: serde::Serialize + std::fmt::Display>(report: &R, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(report).expect("serialisable")
        );
    } else {
        print!("{report}");
    }
}
