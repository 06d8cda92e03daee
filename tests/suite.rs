//! Every integration test in one binary: each file of `tests/` is a module here (cargo links
//! one test binary, not twenty, and runs all the tests in one pool of threads, so a file with
//! one long test no longer leaves the other core idle). Run one file's tests with
//! `cargo test --test suite -- FILE::`. Tests that need a GPU build: `gpu_parity`.

#[path = "batch.rs"]
mod batch;
#[path = "batch_share.rs"]
mod batch_share;
#[path = "budget.rs"]
mod budget;
#[path = "canvas_parity.rs"]
mod canvas_parity;
#[path = "check.rs"]
mod check;
#[path = "checkpoints.rs"]
mod checkpoints;
#[path = "cli.rs"]
mod cli;
#[path = "clip_parity.rs"]
mod clip_parity;
mod common;
#[path = "e2e.rs"]
mod e2e;
#[path = "poster.rs"]
mod poster;
#[path = "resume.rs"]
mod resume;
#[path = "scheduler_parity.rs"]
mod scheduler_parity;
#[path = "sdxl_cli.rs"]
mod sdxl_cli;
#[path = "sdxl_lora.rs"]
mod sdxl_lora;
#[path = "sdxl_parity.rs"]
mod sdxl_parity;
#[path = "sdxl_single.rs"]
mod sdxl_single;
#[path = "txt2img_parity.rs"]
mod txt2img_parity;
#[path = "unet_parity.rs"]
mod unet_parity;
#[path = "vae_parity.rs"]
mod vae_parity;
#[path = "vae_tiled.rs"]
mod vae_tiled;
