//! tessera's model folders: the diffusers layout read into the networks of `tessera-nn` on a
//! runtime, inspected without loading weights (`model info`), and synthesised with random
//! weights (`model synth`).

pub mod folder;
pub mod infer;
pub mod info;
pub mod synth;

pub use folder::ModelDir;
