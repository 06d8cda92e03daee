//! tessera's model folders: the diffusers layout read into the networks of `tessera-nn` on a
//! runtime, inspected without loading weights (`model info`), and synthesised with random
//! weights (`model synth`).

pub mod folder;
pub mod infer;
pub mod infer_sdxl;
pub mod info;
mod record;
pub mod synth;
pub mod text;

pub use folder::ModelDir;
