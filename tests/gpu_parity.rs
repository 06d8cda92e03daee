//! The diffusers parity suites in one test binary, for GPU builds only: a CUDA test binary
//! carries candle's GPU kernels (about 6 MB compressed), so tools/gpu-check.sh takes one
//! binary to the GPU machine rather than six. Run there with `TESSERA_TEST_DEVICE=cuda`.
#![cfg(any(feature = "cuda", feature = "metal"))]

#[path = "canvas_parity.rs"]
mod canvas_parity;
#[path = "clip_parity.rs"]
mod clip_parity;
mod common;
#[cfg(feature = "cuda")]
#[path = "gpu_kernels.rs"]
mod gpu_kernels;
#[path = "txt2img_parity.rs"]
mod txt2img_parity;
#[path = "unet_parity.rs"]
mod unet_parity;
#[path = "vae_parity.rs"]
mod vae_parity;
#[path = "vae_tiled.rs"]
mod vae_tiled;
