//! `tessera plan`: the window grid, counts and memory estimate of a spec, without a model run.

use clap::Args;
use std::path::PathBuf;
use tessera::budget;
use tessera::facts::{model_facts, open_model};
use tessera::spec::{self, Overrides, SpecFile};
use tessera::Result;

#[derive(Debug, Args)]
pub struct PlanArgs {
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
    /// Plan for this precision, as `render --dtype` would: f32, f16, bf16.
    #[arg(long)]
    dtype: Option<String>,
}

pub fn run(a: &PlanArgs) -> Result<()> {
    let file = SpecFile::load(&a.spec)?;
    let overrides = Overrides {
        model: a.model.clone(),
        max_memory: a.max_memory.clone(),
        stream_weights: a.stream_weights,
        attention_mib: a.attention_mib,
        vae_tile: a.vae_tile,
        dtype: a.dtype.clone(),
        ..Default::default()
    };
    let settings = spec::resolve(Some((&a.spec, file)), &overrides)?;
    let rt = tessera::render::open_runtime(&settings)?;
    let facts = model_facts(&open_model(&settings)?, &rt)?;
    let fitted = budget::fit(&settings, &facts)?;
    let s = &fitted.settings;
    if a.json {
        let mut value = serde_json::to_value(&fitted.plan).expect("serialisable");
        value["memory"] = serde_json::to_value(fitted.estimate).expect("serialisable");
        value["estimated_peak_bytes"] = fitted.estimate.peak().into();
        value["chosen"] = serde_json::json!(fitted.chosen);
        value["model_memory"] = serde_json::to_value(&facts.memory).expect("serialisable");
        value["stream_weights"] = s.stream_weights.into();
        value["attention_mib"] = (s.attention_budget >> 20).into();
        value["vae_tile"] = s.tiles.vae.unwrap_or(0).into();
        value["dtype"] = s.precision.name().into();
        value["window_group"] = s.window_group.into();
        println!(
            "{}",
            serde_json::to_string_pretty(&value).expect("serialisable")
        );
        return Ok(());
    }
    print!("{}{}", fitted.plan, fitted.estimate);
    println!(
        "memory settings:   {}weights, up to {} windows per UNet evaluation, attention chunks of {} MiB, VAE {}, {}",
        if s.stream_weights {
            "streamed "
        } else {
            "resident "
        },
        s.window_group,
        s.attention_budget >> 20,
        match s.tiles.vae {
            Some(t) => format!("tiles of {t} px"),
            None => "in one piece".into(),
        },
        s.precision.name()
    );
    if let Some(scratch) = s.vae_scratch.filter(|_| s.tiles.vae.is_some()) {
        println!(
            "VAE stores in RAM: up to {} (the rest in files)",
            tessera::report::mib(scratch)
        );
    }
    if let Some(budget) = s.max_memory {
        println!(
            "memory budget:     {} ({})",
            tessera::report::mib(budget),
            budget::describe_choices(&fitted.chosen)
        );
    }
    Ok(())
}
