//! tessera's diffusion engine: it turns a noise predictor and conditionings into latents, and
//! latents into pictures. It knows nothing of TOML, plans or budgets.
//!
//! - [`scheduler`]: DDIM, Euler, Euler-ancestral, DPM-Solver++ 2M, configured as diffusers'
//!   `from_config` does.
//! - [`noise`]: portable seeded Gaussian noise.
//! - [`guidance`]: conditionings ([`Cond`]) and classifier-free guidance.
//! - [`predictor`]: the [`NoisePredictor`] trait the mixture calls (the UNet implements it).
//! - [`mixture`]: windows and their Gaussian-weighted blend (Mixture of Diffusers).
//! - [`pass`]: one denoising pass over a canvas, for the guide pass and the canvas pass alike.
//! - [`autoencoder`]: the VAE facade: scaling, whole or tiled, half-precision fallback.

pub mod autoencoder;
pub mod guidance;
pub mod mixture;
pub mod noise;
pub mod pass;
pub mod predictor;
pub mod scheduler;

pub use guidance::Cond;
pub use predictor::{NoisePredictor, Placement};
