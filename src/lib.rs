//! tessera: high-resolution posters from TOML canvas specs with latent diffusion models,
//! at the memory cost of a single tile.
//!
//! The pipeline reads top-down in [`pipeline::render`]:
//! spec → plan → prompts → guide → canvas denoise → tiled decode → output.

pub mod autoencoder;
pub mod bench;
pub mod budget;
pub mod canvas;
pub mod check;
pub mod cli;
pub mod error;
pub mod imageio;
pub mod memory;
pub mod model;
pub mod noise;
pub mod output;
pub mod pipeline;
pub mod plan;
pub mod progress;
pub mod scheduler;
pub mod spec;
pub mod synth;
pub mod tiles;

pub use error::{Error, Result};
