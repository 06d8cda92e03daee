//! Model components (one file each) and the loader for diffusers model folders.

pub mod clip;
pub mod tokenizer;
pub mod vae;
