//! The per-phase memory estimate: a sum of what each phase holds at its peak: a fixed base
//! (binary, tokenizer, runtime), the weights alive at that moment, activation terms
//! proportional to what sets them (tokens x channels of a UNet window, pixels x channels of a
//! VAE tile), and the tiled VAE's stores as far as RAM was granted them. The constants were
//! fitted to measured phase peaks of full-size SD 1.5 and checked on the tiny model
//! (BENCHMARKS.md, "Memory"); when the code's memory behaviour changes, re-measure them.

use crate::plan::Plan;
use crate::spec::Settings;

pub(crate) const MIB: u64 = 1 << 20;
/// Process base: binary, tokenizer, allocator and runtime state.
const BASE: u64 = 48 * MIB;
/// UNet activations at window resolution, in units of batch x tokens x channels[0] x 4 bytes
/// (skip connections, residual streams and the transformer's token tensors).
const UNET_TOP_UNITS: f64 = 24.5;
/// A streamed layer's weights as read, plus what the kernels make of them while it runs (bf16
/// pairs, Winograd's transformed kernels, im2col of deep narrow layers). Fitted with the
/// top units to the 512 window's canvas pass inside 800 MiB, f32 and bf16 (BENCHMARKS.md).
const STREAMED_LAYER_COPIES: f64 = 1.35;
/// VAE activations, in units of pixels x channels x 4 bytes, the channels being those entering
/// the decoder's full-resolution stage and those of that stage (`block_out_channels[1]` +
/// `[0]`). A tiled pass holds bands of about a tile's pixels: fitted to SD 1.5 with every store
/// in files (`tessera bench vae-decode --latent 64 --tile 256 --store-mib 0`: 403.1 MiB f32,
/// 280.7 MiB bf16, BENCHMARKS.md); the stores' RAM is counted apart, as granted.
const VAE_BAND_UNITS: f64 = 1.73;
/// The same where the VAE multiplies in bf16 (its weights and its convolutions' laid-out input
/// are half the size).
const VAE_BAND_UNITS_BF16: f64 = 1.47;
/// A pass in one piece holds whole-picture tensors: 2.1 units in SD 1.5's 512² decode
/// (`bench vae-decode --latent 64`: 1050 MiB), 2.3 in the tiny model's.
const VAE_WHOLE_UNITS: f64 = 2.3;

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
        2 => VAE_BAND_UNITS_BF16,
        _ => VAE_BAND_UNITS,
    };
    let channel_bytes = ((m.vae_channels + m.vae_top_channels) * 4) as f64;
    let band = |side: u64| (units * (side * side) as f64 * channel_bytes) as u64;
    let whole = |w: usize, h: usize| (VAE_WHOLE_UNITS * (w * h) as f64 * channel_bytes) as u64;
    // Of `need` bytes of stores, those in RAM (or device memory): what the planner granted.
    let in_ram = |need: u64| s.vae_scratch.map_or(need, |granted| granted.min(need));
    // The tiled VAE's whole-image stores held in RAM (or device memory): what a pass needs at
    // once, within what the planner granted. The largest set: the full-resolution stage's first
    // resnet, its input (`vae_channels`) and two outputs (`vae_top_channels`) alive together,
    // the one inside the resnet in bf16 where the VAE multiplies in bf16.
    let stores = |w: usize, h: usize| {
        let values =
            (m.vae_channels + m.vae_top_channels) * 4 + m.vae_top_channels * vae_bytes as usize;
        in_ram((values * w * h) as u64)
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
    // The mid-block attention's keys and values are held while the stores at latent size are
    // (the full-resolution stores, the largest, come later).
    let at_latent = |w: usize, h: usize| {
        let need = (2 * m.vae_mid_channels * (w / 8) * (h / 8) * 4) as u64;
        mid_attention(w, h) + if tiled(w, h) { in_ram(need) } else { 0 }
    };
    // A tiled pass holds a band and its stores; a one-piece pass whole tensors and the picture.
    let vae_at = |params: u64, w: usize, h: usize, pictures: u64| {
        let full_resolution = match tiled(w, h) {
            true => band(vae_tile(w, h)) + stores(w, h),
            false => whole(w, h) + pictures * image(w, h),
        };
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
