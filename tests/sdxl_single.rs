//! SDXL single-file checkpoints: `tests/fixtures/single-sdxl/tiny-sdxl.safetensors` is
//! `models/tiny-sdxl` in the released SDXL files' layout (`conditioner.embedders.*`), made by
//! `tools/make_sdxl_single.py`, which proves with diffusers' `from_single_file(config=...)` that
//! it holds exactly the folder's tensors.

use crate::common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tessera::models::{infer_sdxl, ModelDir};

fn single_file() -> PathBuf {
    repo_path("tests/fixtures/single-sdxl/tiny-sdxl.safetensors")
}

fn tessera(args: &[&str]) -> Output {
    Command::new(tessera_bin())
        .args(args)
        .output()
        .expect("run tessera")
}

#[test]
fn sdxl_single_file_reads_the_folder_tensors() {
    let folder = ModelDir::open(tiny_sdxl_dir()).unwrap();
    let single = ModelDir::open_model(single_file(), Some(&tiny_sdxl_dir())).unwrap();
    assert!(single.is_sdxl().unwrap());
    let read = tensors_read_equal(
        &folder,
        &single,
        &["unet", "vae", "text_encoder", "text_encoder_2"],
    );
    // Every folder tensor: 408 UNet, 180 VAE, 36 CLIP-L, 37 OpenCLIP (q, k, v sliced from
    // in_proj, text_projection transposed back).
    assert_eq!(read, 661);
}

#[test]
fn sdxl_architecture_is_read_from_the_shapes() {
    let file = tessera::nn::weights::WeightFile::open(&single_file()).unwrap();
    assert!(infer_sdxl::is_sdxl(&file));
    let arch = infer_sdxl::architecture(&file).unwrap();
    let config = |part: &str| -> serde_json::Value {
        let path = tiny_sdxl_dir().join(part).join("config.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    };
    let unet = config("unet");
    for field in [
        "in_channels",
        "out_channels",
        "block_out_channels",
        "down_block_types",
        "up_block_types",
        "layers_per_block",
        "cross_attention_dim",
        "use_linear_projection",
        "transformer_layers_per_block",
        "addition_embed_type",
        "addition_time_embed_dim",
        "projection_class_embeddings_input_dim",
    ] {
        assert_eq!(arch.unet[field], unet[field], "unet {field}");
    }
    let vae = config("vae");
    for field in [
        "in_channels",
        "out_channels",
        "latent_channels",
        "block_out_channels",
        "layers_per_block",
    ] {
        assert_eq!(arch.vae[field], vae[field], "vae {field}");
    }
    for (got, part) in [
        (&arch.text, "text_encoder"),
        (&arch.text_2, "text_encoder_2"),
    ] {
        let want = config(part);
        for field in [
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "max_position_embeddings",
            "hidden_act",
        ] {
            assert_eq!(got[field], want[field], "{part} {field}");
        }
    }
    assert_eq!(
        arch.text_2["projection_dim"],
        config("text_encoder_2")["projection_dim"]
    );
}

fn render(model: &Path, config: Option<&Path>, extra: &[&str], out: &Path) -> candle_core::Tensor {
    let latents = out.with_extension("safetensors");
    let mut args = vec![
        "render",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "a photo of a cat",
        "--width",
        "128",
        "--height",
        "128",
        "--steps",
        "2",
        "--save-latents",
        latents.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    if let Some(config) = config {
        args.extend(["--config", config.to_str().unwrap()]);
    }
    args.extend(extra);
    let o = tessera(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    candle_core::safetensors::load(&latents, &candle_core::Device::Cpu).unwrap()["latents"].clone()
}

#[test]
fn sdxl_single_file_renders_what_the_folder_renders() {
    let tmp = tempfile::tempdir().unwrap();
    let (single, config) = (single_file(), tiny_sdxl_dir());
    let folder = render(&config, None, &[], &tmp.path().join("folder.png"));
    let from_file = render(&single, Some(&config), &[], &tmp.path().join("single.png"));
    assert_eq!(max_abs_diff(&folder, &from_file), 0.0);
    // Streamed from the file, layer by layer, the same.
    let streamed = render(
        &single,
        Some(&config),
        &["--stream-weights"],
        &tmp.path().join("streamed.png"),
    );
    assert_eq!(max_abs_diff(&folder, &streamed), 0.0);
    assert!(max_abs(&folder) > 0.1, "the render produced latents");
    // The tiny model's widths (context 64 from 32 + 32 wide encoders, heads of 16) are not
    // SDXL base's, so its heads cannot be borrowed: without --config, exit 2 naming the file
    // and the fix, before any output is written.
    let png = tmp.path().join("no-config.png");
    let o = tessera(&[
        "render",
        "--model",
        single.to_str().unwrap(),
        "--prompt",
        "a cat",
        "--out",
        png.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("tiny-sdxl.safetensors") && err.contains("--config") && err.contains("SDXL"),
        "{err}"
    );
    assert!(!png.exists());
    let o = tessera(&["model", "info", single.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    // An SDXL file with an SD 1.x config folder is refused, naming both.
    let o = tessera(&[
        "model",
        "info",
        single.to_str().unwrap(),
        "--config",
        tiny_model_dir().to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("tiny-sdxl.safetensors") && err.contains("not an SDXL folder"),
        "{err}"
    );
    let o = tessera(&[
        "model",
        "info",
        single.to_str().unwrap(),
        "--json",
        "--config",
        config.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let info: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for part in ["unet", "vae", "text_encoder", "text_encoder_2"] {
        assert!(
            info[part]["file"]
                .as_str()
                .unwrap()
                .ends_with("tiny-sdxl.safetensors"),
            "{part}"
        );
    }
    // The same parameter counts as the folder's.
    let o = tessera(&["model", "info", config.to_str().unwrap(), "--json"]);
    let folder_info: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for part in ["unet", "vae", "text_encoder", "text_encoder_2"] {
        assert_eq!(
            info[part]["parameters"], folder_info[part]["parameters"],
            "{part}"
        );
    }
}
