//! tessera: high-resolution posters from TOML canvas specs with latent diffusion models, at the
//! memory cost of a single tile.
//!
//! This crate is the render and its reports, on top of the layers below it (each its own
//! crate, so a wrong import does not compile; `docs/ARCHITECTURE.md` has the map):
//! `tessera-core` (errors, interrupts, observers, geometry) → `tessera-nn` (runtime, layers,
//! networks) → `tessera-diffusion` (schedulers, noise, guidance, the windowed mixture, the VAE
//! facade) → `tessera-models` (model folders); `tessera-plan` (spec, plan, budget) and
//! `tessera-check` (image metrics) know nothing of tensors. The render reads top-down in
//! [`render::render`]: spec → plan → prompts → guide → canvas → decode → output.

pub mod bench;
pub mod checking;
pub mod facts;
pub mod imageio;
pub mod output;
pub mod passes;
pub mod preview;
pub mod render;
pub mod report;
pub mod resume;
pub mod session;

pub use render::{render, render_in, RenderReport};
pub use session::Session;
pub use tessera_check as check;
pub use tessera_core::{choices, geometry, interrupt, recycle, units};
pub use tessera_core::{Error, Observer, Quiet, Result};
pub use tessera_diffusion::{autoencoder, guidance, mixture, noise, pass, scheduler};
pub use tessera_diffusion::{Cond, NoisePredictor, Placement};
pub use tessera_models as models;
pub use tessera_nn as nn;
pub use tessera_plan::{budget, plan, spec, validate};
