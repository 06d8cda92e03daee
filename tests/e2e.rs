//! End to end on the bundled trained model (`models/tiny-poster`): the README's demo canvas
//! renders a poster that passes `tessera check` against its guide and matches its golden
//! image, and a fault put in on purpose (per-tile VAE GroupNorm) is caught.
//!
//! The golden image is `tests/fixtures/golden/demo.png`. To change it on purpose (a change
//! that is meant to alter the picture), run `TESSERA_BLESS=1 cargo test --test suite e2e::`, look at
//! the new picture, and commit it with a message that says why it changed.

use crate::common;
use common::repo_path;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

fn tessera(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .output()
        .expect("run tessera")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The README's demo, rendered once for every test of this file.
struct Demo {
    _dir: tempfile::TempDir,
    spec: PathBuf,
    png: PathBuf,
    guide: PathBuf,
    latents: PathBuf,
    report: serde_json::Value,
}

fn demo() -> &'static Demo {
    static DEMO: OnceLock<Demo> = OnceLock::new();
    DEMO.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let spec = dir.path().join("demo.toml");
        std::fs::copy(repo_path("canvases/demo.toml"), &spec).unwrap();
        let latents = dir.path().join("latents.safetensors");
        let o = tessera(&[
            "render",
            spec.to_str().unwrap(),
            "--check",
            "--json",
            "--save-latents",
            latents.to_str().unwrap(),
        ]);
        assert!(
            o.status.success(),
            "the demo's render --check failed: {}\n{}",
            stderr(&o),
            String::from_utf8_lossy(&o.stdout)
        );
        Demo {
            png: dir.path().join("demo.png"),
            guide: dir.path().join("demo.guide.png"),
            report: serde_json::from_slice(&o.stdout).unwrap(),
            spec,
            latents,
            _dir: dir,
        }
    })
}

fn luma_spread(path: &Path) -> f64 {
    let img = image::open(path).unwrap().to_luma8();
    let v: Vec<f64> = img.pixels().map(|p| p.0[0] as f64).collect();
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
}

#[test]
fn the_demo_renders_a_poster_that_passes_its_check() {
    let d = demo();
    let check = &d.report["check"];
    eprintln!(
        "demo check: PSNR {} dB, SSIM {}, worst seam {}, worst drift {}",
        check["psnr"],
        check["ssim"],
        check["seams"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["score"].as_f64().unwrap())
            .fold(0.0, f64::max),
        check["drift"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["delta_e"].as_f64().unwrap())
            .fold(0.0, f64::max)
    );
    assert_eq!(check["pass"], true, "{check}");
    assert!(check["psnr"].as_f64().unwrap() >= 20.0);
    assert!(check["ssim"].as_f64().unwrap() >= 0.5);
    assert_eq!(check["seams"].as_array().unwrap().len(), 7, "{check}");
    assert_eq!(check["drift"].as_array().unwrap().len(), 12, "{check}");
    // A picture, not a flat field: the random-weight model's noise had no structure at guide
    // scale; a poster has light and dark areas.
    let spread = luma_spread(&d.png);
    eprintln!("demo luma standard deviation {spread:.1}");
    assert!(spread > 15.0, "luma standard deviation {spread}");
}

#[test]
fn the_demo_matches_its_golden_image() {
    let d = demo();
    let golden = repo_path("tests/fixtures/golden/demo.png");
    if std::env::var_os("TESSERA_BLESS").is_some() {
        std::fs::copy(&d.png, &golden).unwrap();
        eprintln!("blessed a new golden image: {}", golden.display());
        return;
    }
    // Beyond rounding: a change of the computation order can move a few 8-bit levels over a
    // diffusion, a changed picture moves far more (PSNR < 40 dB, dozens of levels).
    let o = tessera(&[
        "check",
        d.png.to_str().unwrap(),
        "--against",
        golden.to_str().unwrap(),
        "--min-psnr",
        "45",
        "--max-abs-error",
        "16",
    ]);
    eprintln!("{}", String::from_utf8_lossy(&o.stdout));
    assert!(
        o.status.success(),
        "the demo differs from its golden image: {}",
        stderr(&o)
    );
}

#[test]
fn per_tile_vae_groupnorm_is_caught() {
    // Decode the demo's latents the naive way: 128 px tiles, each normalised with its own
    // GroupNorm statistics and attending only to itself, pasted side by side. The tile edges
    // fall on window edges, where `tessera check` looks for seams.
    use candle_core::{DType, IndexOp, Tensor};
    let d = demo();
    let dir = tessera::models::ModelDir::open(repo_path("models/tiny-poster")).unwrap();
    let decoder = dir
        .load_vae_decoder(&tessera::nn::Runtime::default(), DType::F32)
        .unwrap();
    let scaling = dir.vae_config().unwrap().scaling_factor;
    let z = candle_core::safetensors::load(&d.latents, &candle_core::Device::Cpu).unwrap()
        ["latents"]
        .clone();
    let z = (z / scaling).unwrap();
    let rows = (0..4)
        .map(|ty| {
            let tiles = (0..4)
                .map(|tx| {
                    let tile = z.i((.., .., 16 * ty..16 * ty + 16, 16 * tx..16 * tx + 16));
                    decoder
                        .forward(&tile.unwrap().contiguous().unwrap())
                        .unwrap()
                })
                .collect::<Vec<_>>();
            Tensor::cat(&tiles, 3).unwrap()
        })
        .collect::<Vec<_>>();
    let naive = Tensor::cat(&rows, 2).unwrap();
    let png = d.png.with_file_name("naive.png");
    let rgb = tessera::imageio::tensor_to_rgb(&naive).unwrap();
    tessera::output::save_png(&png, &rgb, &[]).unwrap();
    let o = tessera(&[
        "check",
        png.to_str().unwrap(),
        "--guide",
        d.guide.to_str().unwrap(),
        "--spec",
        d.spec.to_str().unwrap(),
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    eprintln!("naive VAE tiles: failures {}", report["failures"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let failed_seams = report["seams"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["pass"] == false)
        .count();
    assert!(failed_seams > 0, "{}", report["seams"]);
}

#[test]
fn a_generated_guide_keeps_its_colours_through_the_upscale() {
    // Strength 0: the output is the guide upscaled, encoded and decoded, nothing else. Dark and
    // saturated colours must survive (the f32 resize once clamped them to grey: PSNR 14.7 dB,
    // drift ΔE 30 on this canvas).
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("guide.toml");
    let demo = std::fs::read_to_string(repo_path("canvases/demo.toml")).unwrap();
    let body = demo.replace("steps = 20", "steps = 10");
    let body = body.replace("strength = 0.5", "strength = 0.0");
    assert!(
        body.contains("strength = 0.0"),
        "the demo has no guide strength to set"
    );
    std::fs::write(&spec, body).unwrap();
    let o = tessera(&["render", spec.to_str().unwrap(), "--check", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let check = &serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["check"];
    let worst = check["drift"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["delta_e"].as_f64().unwrap())
        .fold(0.0, f64::max);
    eprintln!(
        "strength 0: PSNR {} dB, worst drift ΔE {worst:.2}",
        check["psnr"]
    );
    assert!(check["psnr"].as_f64().unwrap() >= 24.0, "{check}");
    assert!(worst <= 8.0, "{check}");
}
