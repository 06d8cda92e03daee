//! tessera: high-resolution posters from TOML canvas specs with latent diffusion models,
//! at the memory cost of a single tile.
//!
//! The pipeline reads top-down in [`pipeline::render`]:
//! spec → plan → prompts → guide → canvas denoise → tiled decode → output.

pub mod error;
pub mod model;
pub mod noise;
pub mod scheduler;

pub use error::{Error, Result};
