//! SDXL through the `tessera` binary on the tiny SDXL-shaped model: the txt2img reference
//! reproduced from the command line, per-window size and crop conditioning on a 2048x1024 canvas
//! with a guide, the micro-conditioning flags, and `model info`.

use crate::common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn tessera(args: &[&str]) -> Output {
    Command::new(tessera_bin())
        .args(args)
        .output()
        .expect("run tessera")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The tiny SDXL model with `force_zeros_for_empty_prompt` off (components linked), so that
/// the empty negative prompt is encoded as the reference call (`negative_prompt=""`) does.
fn model_encoding_empty_negatives(tmp: &Path) -> PathBuf {
    let dir = tmp.join("tiny-sdxl");
    std::fs::create_dir(&dir).unwrap();
    for part in [
        "unet",
        "vae",
        "text_encoder",
        "text_encoder_2",
        "tokenizer",
        "tokenizer_2",
        "scheduler",
    ] {
        std::os::unix::fs::symlink(tiny_sdxl_dir().join(part), dir.join(part)).unwrap();
    }
    let index = std::fs::read_to_string(tiny_sdxl_dir().join("model_index.json")).unwrap();
    let index = index.replace(
        "\"force_zeros_for_empty_prompt\": true",
        "\"force_zeros_for_empty_prompt\": false",
    );
    assert!(index.contains("\"force_zeros_for_empty_prompt\": false"));
    std::fs::write(dir.join("model_index.json"), index).unwrap();
    dir
}

fn render_reference(model: &Path, tmp: &Path, extra: &[&str]) -> (Output, candle_core::Tensor) {
    let f = fixture_in("reference-sdxl", "c_txt2img_euler");
    let noise = tmp.join("noise.safetensors");
    candle_core::safetensors::save(
        &[("noise".to_string(), get(&f, "init_latents"))]
            .into_iter()
            .collect(),
        &noise,
    )
    .unwrap();
    let latents = tmp.join("latents.safetensors");
    let png = tmp.join("cat.png");
    let mut args = vec![
        "render",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "a photo of a cat",
        "--negative",
        "",
        "--width",
        "128",
        "--height",
        "128",
        "--steps",
        "8",
        "--guidance",
        "5",
        "--init-noise",
        noise.to_str().unwrap(),
        "--save-latents",
        latents.to_str().unwrap(),
        "--out",
        png.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let o = tessera(&args);
    assert!(o.status.success(), "render failed: {}", stderr(&o));
    let got = candle_core::safetensors::load(&latents, &candle_core::Device::Cpu).unwrap()
        ["latents"]
        .clone();
    (o, got)
}

#[test]
fn render_with_init_noise_reproduces_diffusers_sdxl_euler() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_encoding_empty_negatives(tmp.path());
    let (_, got) = render_reference(&model, tmp.path(), &[]);
    let f = fixture_in("reference-sdxl", "c_txt2img_euler");
    let reference = get(&f, "final_latents");
    let rel = max_abs_diff(&got, &reference) / max_abs(&reference);
    eprintln!("CLI sdxl euler final latents rel diff {rel:.2e}");
    assert!(rel <= 1e-3, "rel diff {rel:e}");
    let img = image::open(tmp.path().join("cat.png")).unwrap();
    assert_eq!((img.width(), img.height()), (128, 128));

    // The flags reach the UNet: the reference's own values change nothing, others do.
    let (_, same) = render_reference(
        &model,
        tmp.path(),
        &["--original-size", "128x128", "--crop", "0,0"],
    );
    assert_eq!(max_abs_diff(&same, &got), 0.0);
    let (_, cropped) = render_reference(
        &model,
        tmp.path(),
        &["--original-size", "512x256", "--crop", "64,32"],
    );
    let moved = max_abs_diff(&cropped, &got) / max_abs(&got);
    eprintln!("original size 512x256, crop 64,32: latents moved by {moved:.2e} (relative)");
    assert!(moved > 1e-3, "size and crop conditioning had no effect");
}

#[test]
fn the_bundled_sdxl_drops_an_empty_negative_to_zeros() {
    // force_zeros_for_empty_prompt: the same render with the shipped model differs from the
    // one encoding "" (the unconditional branch sees zeros).
    let tmp = tempfile::tempdir().unwrap();
    let (_, zeros) = render_reference(&tiny_sdxl_dir(), tmp.path(), &[]);
    let f = fixture_in("reference-sdxl", "c_txt2img_euler");
    let encoded = get(&f, "final_latents");
    let rel = max_abs_diff(&zeros, &encoded) / max_abs(&encoded);
    eprintln!("zeros vs encoded empty negative: rel diff {rel:.2e}");
    assert!(rel > 1e-3);
}

#[test]
fn micro_conditioning_flags_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.png");
    let sd = tiny_model_dir();
    let o = tessera(&[
        "render",
        "--model",
        sd.to_str().unwrap(),
        "--steps",
        "1",
        "--crop",
        "0,64",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("canvas.crop") && stderr(&o).contains("SDXL"));
    assert!(!out.exists());
    let o = tessera(&["render", "--original-size", "12", "--steps", "1"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("WxH"), "{}", stderr(&o));
}

#[test]
fn model_info_reports_both_text_encoders() {
    let dir = tiny_sdxl_dir();
    let o = tessera(&["model", "info", dir.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let info: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(info["family"], "SDXL-shaped (custom sizes)");
    assert_eq!(info["native_size"], serde_json::json!([128, 128]));
    // The weight files' counts (the model was made with diffusers).
    let params = |c: &str| info[c]["parameters"].as_u64().unwrap();
    assert_eq!(params("unet"), 2_046_564);
    assert_eq!(params("text_encoder"), 1_600_672);
    assert_eq!(params("text_encoder_2"), 1_601_696);
}

/// 2K wide at half the height of a square poster, as `poster.rs` (CI time: the exact VAE
/// attention over every latent pixel grows with the square of the pixel count; 76 s at 2048²).
#[test]
fn a_2k_sdxl_canvas_with_a_guide_renders_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = tmp.path().join("poster.toml");
    let model = tiny_sdxl_dir();
    std::fs::write(
        &spec,
        format!(
            "model = {:?}\n[canvas]\nwidth = 2048\nheight = 1024\nseed = 5\nsteps = 2\n\
             [prompt]\ntext = \"a lighthouse at dusk, poster\"\n\
             [tiles]\nsize = 512\noverlap = 128\nvae = 512\n[guide]\nsteps = 2\nstrength = 0.5\n",
            model.display().to_string()
        ),
    )
    .unwrap();
    let o = tessera(&["render", spec.to_str().unwrap()]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    let out = image::open(tmp.path().join("poster.png")).unwrap();
    assert_eq!((out.width(), out.height()), (2048, 1024));
    let guide = image::open(tmp.path().join("poster.guide.png")).unwrap();
    assert_eq!(
        (guide.width(), guide.height()),
        (128, 64),
        "the canvas's aspect inside the native 128x128"
    );
    assert!(err.contains("text encoder 2 x1"), "{err}");
}
