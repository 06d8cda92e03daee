//! tessera's neural-network layer: tensors and the networks of a latent diffusion model, and
//! nothing about specs, plans, budgets, reports or terminals.
//!
//! - [`runtime`]: the device and the dtype each component computes in (the one home of those
//!   rules).
//! - [`weights`]: safetensors read tensor by tensor with positioned reads (no memory map).
//! - [`layers`]: the pieces the networks share: one GroupNorm with f32 statistics, one
//!   budgeted attention, one resnet block, the convolutions.
//! - [`tokenizer`], [`clip`], [`unet`], [`vae`]: one module per network, each a plain config
//!   struct read from diffusers JSON, `new(vb, cfg)` and `forward`.

pub mod clip;
pub mod config;
pub mod device_memory;
pub mod kernels;
pub mod layers;
pub mod ldm;
pub mod lora;
pub mod runtime;
pub mod tokenizer;
pub mod unet;
pub mod vae;
pub mod weights;

pub use config::SampleSize;
pub use runtime::Runtime;
