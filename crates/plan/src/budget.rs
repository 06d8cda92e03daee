//! Memory: the peak RSS each phase of a render will reach, estimated from the plan and the
//! weight headers, and the settings that fit a `--max-memory` budget.
//!
//! The estimate is a sum of what each phase holds at its peak: a fixed base (binary, tokenizer,
//! runtime), the weights alive at that moment, and activation terms proportional to what sets
//! them (tokens x channels of a UNet window, pixels x channels of a VAE tile). The activation
//! constants were fitted to measured phase peaks of full-size SD 1.5 and checked on the tiny
//! model (BENCHMARKS.md, "Memory"); when the code's memory behaviour changes, re-measure them.

use crate::plan::Plan;
pub use crate::relax::describe_choices;
use crate::relax::{changes, shrink_attention, shrink_vae_tile, shrink_window};
use crate::spec::Settings;
use tessera_core::choices::Precision;
use tessera_core::units::mib;
use tessera_core::{Error, Result};

const MIB: u64 = 1 << 20;
/// Process base: binary, tokenizer, allocator and runtime state.
const BASE: u64 = 48 * MIB;
/// UNet activations at window resolution, in units of batch x tokens x channels[0] x 4 bytes
/// (skip connections, residual streams and the transformer's token tensors).
const UNET_TOP_UNITS: f64 = 24.5;
/// A streamed layer's weights are read once and then copied once more by the convolution
/// kernels (candle reshapes the kernel), plus the im2col of deep, narrow layers.
const STREAMED_LAYER_COPIES: f64 = 1.35;
/// VAE activations per tile, in units of tile pixels x channels x 4 bytes, where channels are
/// those entering the decoder's full-resolution stage (`block_out_channels[1]`): that stage's
/// upsampling convolution is the largest. Fitted to SD 1.5 decodes with every store in files
/// (`tessera bench vae-decode --store-mib 0`, BENCHMARKS.md): the tiled VAE's RAM stores are
/// counted apart, as granted.
const VAE_TILE_UNITS: f64 = 2.6;
/// The same where the VAE multiplies in bf16 (its weights and its convolutions' laid-out input
/// are half the size).
const VAE_TILE_UNITS_BF16: f64 = 2.2;
/// Headroom kept free under a budget for what the estimate cannot see (page cache, jitter).
const HEADROOM: f64 = 0.9;
/// Windows share a UNet evaluation, and the tiled VAE keeps stores in RAM, while that raises
/// the estimated peak by at most this share: memory stays that of one window, and the tiny
/// model's per-layer overhead is paid once per group rather than once per window.
const GROUP_GROWTH: f64 = 0.10;
/// The most windows one evaluation takes.
const MAX_GROUP: usize = 16;

/// Sizes the estimate needs, from configs and weight headers (no weights are loaded).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct MemoryFacts {
    pub text_encoder_params: u64,
    pub unet_params: u64,
    /// Parameters of the largest single UNet layer (what a streamed UNet holds at once).
    pub unet_largest_layer_params: u64,
    /// Parameters of the largest single UNet weight tensor (what the CPU widens at once).
    pub unet_largest_tensor_params: u64,
    pub unet_channels: usize,
    pub unet_heads: usize,
    pub vae_encoder_params: u64,
    pub vae_decoder_params: u64,
    /// Channels entering the VAE decoder's full-resolution stage.
    pub vae_channels: usize,
    /// Channels of the VAE's full-resolution stage (`block_out_channels[0]`).
    pub vae_top_channels: usize,
    /// Bytes per VAE weight as loaded for an f32 VAE: 2 where a CPU multiplies bf16 weights in
    /// bf16 (`--dtype bf16` with AVX512_BF16), else 4 (0 is read as 4).
    pub vae_weight_bytes: u64,
    /// Channels of the VAE's mid-block attention (its keys and values are held whole).
    pub vae_mid_channels: usize,
    /// Whether attention materialises chunks of scores (candle's path, GPUs) rather than
    /// streaming them through registers (the AVX-512 flash kernel).
    pub attention_scores: bool,
    /// On a GPU (the estimate is then of device memory), its memory free when planning began
    /// (0: the device cannot say); `None` on the CPU.
    pub device_free: Option<u64>,
    /// On a GPU, what the device held when planning began, after a first kernel had run: the
    /// CUDA context, loaded kernels and cuBLAS's workspace (about 0.7 GiB on an H200), and
    /// any other process's memory. It replaces the CPU's process base in every phase.
    pub device_used: u64,
}

/// What planning needs to know of a model, read from configs and weight headers (no weights).
#[derive(Debug, Clone)]
pub struct ModelFacts {
    /// The model's native picture size `(width, height)` in pixels.
    pub native_size: (usize, usize),
    pub memory: MemoryFacts,
}

impl ModelFacts {
    /// Facts for planning geometry only (the memory estimate is then meaningless).
    pub fn geometry_only(native_size: (usize, usize)) -> Self {
        Self {
            native_size,
            memory: MemoryFacts::default(),
        }
    }
}

/// Estimated peak RSS of each phase, in bytes.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Estimate {
    pub encode_prompts: u64,
    pub guide_pass: u64,
    pub canvas_denoise: u64,
    pub decode: u64,
}

impl Estimate {
    pub fn peak(&self) -> u64 {
        self.encode_prompts
            .max(self.guide_pass)
            .max(self.canvas_denoise)
            .max(self.decode)
    }

    /// `(phase, bytes)` in render order, named as the render's phase report names them.
    pub fn phases(&self) -> [(&'static str, u64); 4] {
        [
            ("encode prompts", self.encode_prompts),
            ("guide pass", self.guide_pass),
            ("canvas denoise", self.canvas_denoise),
            ("decode", self.decode),
        ]
    }
}

impl std::fmt::Display for Estimate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "estimated peak RSS per phase:")?;
        for (phase, bytes) in self.phases() {
            if bytes > 0 {
                writeln!(f, "  {phase:<16} {:>8.0} MiB", bytes as f64 / MIB as f64)?;
            }
        }
        writeln!(
            f,
            "estimated peak:    {:.0} MiB",
            self.peak() as f64 / MIB as f64
        )
    }
}

/// The per-phase estimate of a planned render with these settings.
pub fn estimate(plan: &Plan, m: &MemoryFacts, s: &Settings) -> Estimate {
    let base = match m.device_free {
        Some(_) => m.device_used,
        None => BASE,
    };
    let unet_bytes = conv_dtype_bytes(s);
    let cfg = plan.prompts.iter().any(|p| p.guidance > 1.0);
    let unet = |window: (usize, usize)| unet_peak(m, s, unet_bytes, window, cfg);
    let vae_tile = |w: usize, h: usize| s.tiles.vae.unwrap_or(w.max(h)).min(w.max(h)) as u64;
    // A tiled pass streams the picture (the guide's upscale in, PNG rows out) band by band;
    // only a one-piece pass holds it whole.
    let tiled = |w: usize, h: usize| s.tiles.vae.is_some_and(|t| w.max(h) > t);
    // An f32 VAE on the CPU, its weights in bf16 where it multiplies in bf16.
    let vae_bytes = match (m.device_free, m.vae_weight_bytes) {
        (None, 2) => 2,
        _ => 4,
    };
    let units = match vae_bytes {
        2 => VAE_TILE_UNITS_BF16,
        _ => VAE_TILE_UNITS,
    };
    let tile_act = |side: u64| (units * (side * side * m.vae_channels as u64 * 4) as f64) as u64;
    // The tiled VAE's whole-image stores held in RAM (or device memory): what a pass needs at
    // once, within what the planner granted. The largest set: the full-resolution stage's first
    // resnet, its input (`vae_channels`) and two outputs (`vae_top_channels`) alive together.
    let stores = |w: usize, h: usize| {
        let need = ((m.vae_channels + 2 * m.vae_top_channels) * w * h * 4) as u64;
        s.vae_scratch.map_or(need, |granted| granted.min(need))
    };
    let image = |w: usize, h: usize| (w * h * 3 * 4) as u64;
    let canvas_latents = (plan.width / 8 * plan.height / 8 * 4 * 4) as u64 * 8;

    let encode_prompts = base
        + m.text_encoder_params * s.precision.size() as u64
        + plan.prompts.len() as u64 * 2 * 77 * 1024 * 4;
    // The mid-block attention holds keys and values of every latent pixel (f32; bf16 where
    // the VAE multiplies in bf16), and on candle's path score chunks of at most 64 MiB with
    // their softmax.
    let mid_attention = |w: usize, h: usize| {
        let kv = (w / 8 * h / 8 * m.vae_mid_channels * 2) as u64 * vae_bytes;
        kv + if m.attention_scores { 2 * 64 * MIB } else { 0 }
    };
    // A tiled pass holds its stores; a one-piece pass the picture instead.
    let held = |w: usize, h: usize, pictures: u64| match tiled(w, h) {
        true => stores(w, h),
        false => pictures * image(w, h),
    };
    // The mid-block attention's keys and values are held while the stores at latent size are
    // (the full-resolution stores, the largest, come later).
    let at_latent = |w: usize, h: usize| {
        let need = (2 * m.vae_mid_channels * (w / 8) * (h / 8) * 4) as u64;
        let ram = s.vae_scratch.map_or(need, |granted| granted.min(need));
        mid_attention(w, h) + if tiled(w, h) { ram } else { 0 }
    };
    let vae_at = |params: u64, w: usize, h: usize, pictures: u64| {
        let full_resolution = tile_act(vae_tile(w, h)) + held(w, h, pictures);
        params * vae_bytes + full_resolution.max(at_latent(w, h))
    };
    // In one piece the decoded picture is held once (f32), the encoder's input and a copy.
    let decode_at = |w: usize, h: usize| vae_at(m.vae_decoder_params, w, h, 1);
    let encode_at = |w: usize, h: usize| vae_at(m.vae_encoder_params, w, h, 2);
    // A decoder that decoded the guide and stays for the final decode.
    let kept_decoder = match &plan.guide {
        Some(g) if g.image.is_none() && s.keep_decoder => m.vae_decoder_params * vae_bytes,
        _ => 0,
    };
    let guide_pass = plan.guide.as_ref().map_or(0, |g| {
        let render = match g.image {
            Some(_) => 0,
            None => unet((g.width, g.height)).max(decode_at(g.width, g.height)),
        };
        base + canvas_latents + render.max(kept_decoder + encode_at(plan.width, plan.height))
    });
    // Image regions are encoded at the start of the canvas pass, before any UNet work.
    let regions = plan
        .image_regions
        .iter()
        .map(|r| encode_at(r.rect.w * 8, r.rect.h * 8))
        .max()
        .unwrap_or(0);
    Estimate {
        encode_prompts,
        guide_pass,
        canvas_denoise: base + canvas_latents + kept_decoder + unet(plan.window).max(regions),
        decode: base + canvas_latents + decode_at(plan.width, plan.height),
    }
}

/// Bytes per UNet weight (activations are sized in f32: the CPU computes in f32).
fn conv_dtype_bytes(s: &Settings) -> u64 {
    s.precision.size() as u64
}

/// The UNet's own peak on one window: weights held, plus the larger of the window-resolution
/// activations and (when streaming) the largest layer in flight.
fn unet_peak(m: &MemoryFacts, s: &Settings, bytes: u64, window: (usize, usize), cfg: bool) -> u64 {
    let batch = if cfg { 2 } else { 1 } * s.window_group.max(1) as u64;
    let tokens = (window.0 / 8 * window.1 / 8) as u64;
    // Activations are f32 on the CPU; a GPU computes in the precision asked for.
    let act = match m.device_free {
        Some(_) => s.precision.size() as u64,
        None => 4,
    };
    let unit = batch * tokens * m.unet_channels as u64 * act;
    let scores = batch * m.unet_heads as u64 * tokens * tokens * act;
    // Scores and their softmax are alive together, each within the attention budget.
    let attention = match m.attention_scores {
        true => 2 * scores.min(s.attention_budget as u64),
        false => 0,
    };
    let top = (UNET_TOP_UNITS * unit as f64) as u64 + attention;
    // On the CPU half-precision weights are widened to f32 one tensor at a time, as used.
    let widened = match m.device_free.is_none() && bytes < 4 {
        true => m.unet_largest_tensor_params * 4,
        false => 0,
    };
    let layer = m.unet_largest_layer_params * bytes;
    if s.stream_weights {
        top.max((STREAMED_LAYER_COPIES * layer as f64) as u64 + widened)
    } else {
        m.unet_params * bytes + top.max(layer + widened)
    }
}

/// Settings fitted to a budget, with their plan, its estimate and what fitting changed.
#[derive(Debug, Clone)]
pub struct Fitted {
    pub settings: Settings,
    pub plan: Plan,
    pub estimate: Estimate,
    /// What fitting changed, in words (empty without a budget or when it fit as given).
    pub chosen: Vec<String>,
}

fn planned(s: &Settings, facts: &ModelFacts) -> Result<(Plan, Estimate)> {
    let plan = Plan::new(s, facts.native_size)?;
    let estimate = estimate(&plan, &facts.memory, s);
    Ok((plan, estimate))
}

/// Fit `s` to its `max_memory`: relax, in order of cost to speed and quality, the attention
/// chunk, weight streaming, the VAE tile, the window size (unless the spec fixes it) and the
/// precision, until the estimate fits with headroom. An impossible budget is an error that
/// names the smallest estimate found. Without a budget the settings are planned as they are.
pub fn fit(s: &Settings, facts: &ModelFacts) -> Result<Fitted> {
    let original = s;
    let mut s = s.clone();
    // Settings are relaxed and windows grouped with every tiled-VAE store in files; the RAM
    // the stores may have is decided last (`grant_stores`).
    s.vae_scratch = Some(0);
    let (mut plan, mut est) = planned(&s, facts)?;
    let Some(budget) = s.max_memory else {
        let ceiling = grown(&est, u64::MAX);
        est = group_windows(&mut s, &plan, &facts.memory, est, ceiling);
        // On a GPU the stores take what the device has free (through host RAM a 2048² decode
        // took 62 s instead of 3.7 s on an H200), so a small card spills rather than fails.
        s.vae_scratch = match facts.memory.device_free {
            None => grant_stores(&s, &plan, &facts.memory, ceiling).0,
            Some(0) => None,
            Some(free) => Some(((free as f64 * HEADROOM) as u64).saturating_sub(est.peak())),
        };
        let estimate = estimate(&plan, &facts.memory, &s);
        return Ok(Fitted {
            settings: s,
            plan,
            estimate,
            chosen: Vec::new(),
        });
    };
    let limit = (budget as f64 * HEADROOM) as u64;
    // Under a budget the decoder is read again for the final decode (a fraction of a second)
    // rather than held through the canvas pass, so the choice does not depend on canvas size.
    let guide_rendered = plan.guide.as_ref().is_some_and(|g| g.image.is_none());
    if s.keep_decoder && guide_rendered {
        s.keep_decoder = false;
        (plan, est) = planned(&s, facts)?;
    }
    let window_fixed = s.tiles.size.is_some();
    let native = facts.native_size;
    type Step = Box<dyn Fn(&mut Settings) -> bool>;
    let steps: Vec<Step> = vec![
        Box::new(|s| shrink_attention(s, 64)),
        Box::new(|s| shrink_attention(s, 16)),
        Box::new(|s| !std::mem::replace(&mut s.stream_weights, true)),
        Box::new(|s| shrink_vae_tile(s, 256)),
        Box::new(|s| shrink_vae_tile(s, 128)),
        Box::new(move |s| !window_fixed && shrink_window(s, native, (3, 4))),
        Box::new(move |s| !window_fixed && shrink_window(s, native, (1, 2))),
        Box::new(|s| {
            s.precision == Precision::F32 && {
                s.precision = Precision::F16;
                true
            }
        }),
    ];
    for step in &steps {
        if est.peak() <= limit {
            break;
        }
        if step(&mut s) {
            (plan, est) = planned(&s, facts)?;
        }
    }
    if est.peak() > limit {
        return Err(Error::input(
            &s.origin,
            Some("canvas.max_memory"),
            format!(
                "a budget of {} cannot be met: the leanest settings ({}) are estimated at {} \
                 (and {:.0}% of the budget is kept free)",
                mib(budget),
                changes(original, &s).join(", "),
                mib(est.peak()),
                (1.0 - HEADROOM) * 100.0
            ),
            format!(
                "raise --max-memory to at least {:.0}M, or use a smaller model",
                (est.peak() as f64 / HEADROOM / MIB as f64).ceil()
            ),
        ));
    }
    // A later step (streaming) may have made an earlier one (small attention chunks, which
    // cost time) unnecessary: give back what still fits.
    for wider_mib in [64, original.attention_budget >> 20] {
        if s.attention_budget < wider_mib << 20 && wider_mib << 20 <= original.attention_budget {
            let mut wider = s.clone();
            wider.attention_budget = wider_mib << 20;
            let (wider_plan, wider_est) = planned(&wider, facts)?;
            if wider_est.peak() <= limit {
                (s, plan, est) = (wider, wider_plan, wider_est);
            }
        }
    }
    let ceiling = grown(&est, limit);
    group_windows(&mut s, &plan, &facts.memory, est, ceiling);
    (s.vae_scratch, est) = grant_stores(&s, &plan, &facts.memory, ceiling);
    let chosen = changes(original, &s);
    Ok(Fitted {
        settings: s,
        plan,
        estimate: est,
        chosen,
    })
}

/// What the render may grow to from its one-window, stores-in-files estimate: by
/// [`GROUP_GROWTH`], within `limit`. Window groups (the canvas pass) and the tiled VAE's RAM
/// stores (the VAE phases) both grow to it and no further, so a render's peak is that of one
/// window whatever the canvas size: a 2K canvas fills both, a 512 one the stores.
fn grown(one: &Estimate, limit: u64) -> u64 {
    ((one.peak() as f64 * (1.0 + GROUP_GROWTH)) as u64).min(limit)
}

/// The most RAM the tiled VAE's stores may have with every VAE phase's estimate within
/// `ceiling` (found by bisection: the estimate grows with the grant, then stops where the
/// stores of the largest pass fit); returns it with the estimate.
fn grant_stores(
    s: &Settings,
    plan: &Plan,
    m: &MemoryFacts,
    ceiling: u64,
) -> (Option<u64>, Estimate) {
    let with = |grant: u64| {
        let mut granted = s.clone();
        granted.vae_scratch = Some(grant);
        let est = estimate(plan, m, &granted);
        (est, est.guide_pass.max(est.decode) <= ceiling)
    };
    let (mut fits, mut over) = (0, ceiling.max(1));
    if with(over).1 {
        fits = over;
    }
    while over - fits > MIB && !with(over).1 {
        let mid = fits + (over - fits) / 2;
        match with(mid).1 {
            true => fits = mid,
            false => over = mid,
        }
    }
    (Some(fits), with(fits).0)
}

/// The most windows per UNet evaluation whose estimate stays within `ceiling`; returns the
/// estimate with them.
fn group_windows(
    s: &mut Settings,
    plan: &Plan,
    m: &MemoryFacts,
    one: Estimate,
    ceiling: u64,
) -> Estimate {
    let per_step = plan
        .guide
        .as_ref()
        .map_or(0, |g| g.windows.len())
        .max(plan.windows.len())
        .min(MAX_GROUP);
    let mut best = one;
    for group in 2..=per_step {
        let mut wider = s.clone();
        wider.window_group = group;
        let est = estimate(plan, m, &wider);
        if est.peak() > ceiling {
            break;
        }
        (s.window_group, best) = (group, est);
    }
    best
}
