//! The `tessera` binary as scripts call it: parity through flags, and clear errors on bad input.

use crate::common;
use common::*;
use std::path::Path;
use std::process::{Command, Output};

fn tessera(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .output()
        .expect("run tessera")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn render_with_init_noise_reproduces_diffusers_ddim() {
    let f = fixture("e_txt2img_ddim");
    let tmp = tempfile::tempdir().unwrap();
    let noise = tmp.path().join("noise.safetensors");
    candle_core::safetensors::save(
        &[("noise".to_string(), get(&f, "init_latents"))]
            .into_iter()
            .collect(),
        &noise,
    )
    .unwrap();
    let latents = tmp.path().join("latents.safetensors");
    let png = tmp.path().join("cat.png");
    let model = tiny_model_dir();
    let o = tessera(&[
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
        "10",
        "--guidance",
        "7.5",
        "--scheduler",
        "ddim",
        "--init-noise",
        noise.to_str().unwrap(),
        "--save-latents",
        latents.to_str().unwrap(),
        "--out",
        png.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "render failed: {}", stderr(&o));
    let got = candle_core::safetensors::load(&latents, &candle_core::Device::Cpu).unwrap()
        ["latents"]
        .clone();
    let reference = get(&f, "final_latents");
    let rel = max_abs_diff(&got, &reference) / max_abs(&reference);
    eprintln!("CLI ddim final latents rel diff {rel:.2e}");
    assert!(rel <= 1e-3, "rel diff {rel:e}");
    let img = image::open(&png).unwrap();
    assert_eq!((img.width(), img.height()), (128, 128));
    let bytes = std::fs::read(&png).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        text.contains("parameters") && text.contains("Seed: 0"),
        "PNG lacks the parameters chunk"
    );
}

fn expect_input_error(args: &[&str], must_name: &[&str]) {
    let o = tessera(args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "args {args:?}: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    for word in must_name {
        assert!(
            err.contains(word),
            "error for {args:?} should name {word:?}: {err}"
        );
    }
    assert!(err.contains("fix:"), "error should say the fix: {err}");
}

fn write_spec(dir: &Path, body: &str) -> String {
    let p = dir.join("poster.toml");
    std::fs::write(&p, body).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn bad_input_exits_2_naming_file_field_and_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = write_spec(tmp.path(), "[canvas]\nwidht = 512\n");
    expect_input_error(&["render", &spec], &["poster.toml", "widht"]);
    let spec = write_spec(tmp.path(), "[canvas]\nwidth = 500\n");
    expect_input_error(&["render", &spec], &["poster.toml", "canvas.width"]);
    let spec = write_spec(tmp.path(), "[canvas]\nscheduler = \"heun\"\n");
    expect_input_error(&["render", &spec], &["canvas.scheduler", "ddim"]);
    let spec = write_spec(tmp.path(), "model = \"no/such/model\"\n");
    expect_input_error(&["render", &spec], &["no/such/model", "model folder"]);
    expect_input_error(&["render", "--width", "100"], &["canvas.width"]);
    expect_input_error(&["render", "missing-spec.toml"], &["missing-spec.toml"]);
    let canvas = "[canvas]\nwidth = 512\nheight = 512\n";
    let spec = write_spec(
        tmp.path(),
        &format!("{canvas}[[region]]\nrect = [256, 0, 512, 256]\nprompt = \"x\"\n"),
    );
    expect_input_error(&["render", &spec], &["region[0].rect", "outside"]);
    let spec = write_spec(
        tmp.path(),
        &format!("{canvas}[[region]]\nrect = [0, 0, 0, 256]\nprompt = \"x\"\n"),
    );
    expect_input_error(&["render", &spec], &["region[0].rect width"]);
    let spec = write_spec(tmp.path(), &format!("{canvas}[tiles]\nsize = 1024\n"));
    expect_input_error(&["render", &spec], &["tiles.size", "larger than"]);
    let spec = write_spec(
        tmp.path(),
        &format!("{canvas}[[region]]\nrect = [0, 0, 64, 64]\nimage = \"nope.png\"\n"),
    );
    expect_input_error(&["render", &spec], &["region[0].image", "nope.png"]);
    let spec = write_spec(
        tmp.path(),
        &format!("{canvas}[[region]]\nrect = [0, 0, 64, 64]\n"),
    );
    expect_input_error(&["render", &spec], &["region[0].prompt"]);
    let out = tmp.path().join("never.png");
    assert!(!out.exists());
}

#[test]
fn model_info_and_synth_agree_on_the_tiny_architecture() {
    let tmp = tempfile::tempdir().unwrap();
    let synth = tmp.path().join("tiny");
    let o = tessera(&[
        "model",
        "synth",
        "--arch",
        "tiny",
        "--out",
        synth.to_str().unwrap(),
        "--seed",
        "5",
    ]);
    assert!(o.status.success(), "synth failed: {}", stderr(&o));
    let info = |dir: &Path| -> serde_json::Value {
        let o = tessera(&["model", "info", dir.to_str().unwrap(), "--json"]);
        assert!(o.status.success(), "info failed: {}", stderr(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let (a, b) = (info(&tiny_model_dir()), info(&synth));
    for part in ["unet", "vae", "text_encoder"] {
        assert_eq!(
            a[part]["parameters"], b[part]["parameters"],
            "{part} parameter count"
        );
    }
    let png = tmp.path().join("one.png");
    let o = tessera(&[
        "render",
        "--model",
        synth.to_str().unwrap(),
        "--steps",
        "1",
        "--width",
        "64",
        "--height",
        "64",
        "--out",
        png.to_str().unwrap(),
    ]);
    assert!(
        o.status.success(),
        "render on synthesized model failed: {}",
        stderr(&o)
    );
    assert!(png.is_file());
}

#[test]
fn decode_and_encode_commands_tile_without_changing_the_result() {
    let tmp = tempfile::tempdir().unwrap();
    let f = fixture("d_vae_decode");
    let latents = tmp.path().join("z.safetensors");
    let z = (get(&f, "16x24.latents") * 1.0).unwrap();
    candle_core::safetensors::save(
        &[("latents".to_string(), z)].into_iter().collect(),
        &latents,
    )
    .unwrap();
    let model = tiny_model_dir();
    let (tiled, whole) = (tmp.path().join("tiled.png"), tmp.path().join("whole.png"));
    for (out, extra) in [
        (&tiled, vec!["--tile", "64", "--overlap", "16"]),
        (&whole, vec!["--no-tiling"]),
    ] {
        let mut args = vec![
            "decode",
            latents.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend(extra);
        let o = tessera(&args);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let (a, b) = (
        image::open(&tiled).unwrap().to_rgb8(),
        image::open(&whole).unwrap().to_rgb8(),
    );
    assert_eq!(a.dimensions(), (192, 128));
    let worst = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap();
    assert!(
        worst <= 1,
        "tiled and untiled decodes differ by {worst} levels"
    );
    let enc = tmp.path().join("enc.safetensors");
    let o = tessera(&[
        "encode",
        whole.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--out",
        enc.to_str().unwrap(),
        "--tile",
        "64",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let back =
        candle_core::safetensors::load(&enc, &candle_core::Device::Cpu).unwrap()["latents"].clone();
    assert_eq!(back.dims(), &[1, 4, 16, 24]);
    expect_input_error(
        &[
            "decode",
            "missing.safetensors",
            "--model",
            model.to_str().unwrap(),
            "--out",
            "x.png",
        ],
        &["missing.safetensors"],
    );
}

#[test]
fn streaming_weights_render_is_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model_dir();
    let mut latents = Vec::new();
    for (name, extra) in [("held", None), ("streamed", Some("--stream-weights"))] {
        let out = tmp.path().join(format!("{name}.safetensors"));
        let png = tmp.path().join(format!("{name}.png"));
        let mut args = vec![
            "render",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "a cat",
            "--width",
            "128",
            "--height",
            "128",
            "--steps",
            "3",
            "--save-latents",
            out.to_str().unwrap(),
            "--out",
            png.to_str().unwrap(),
        ];
        args.extend(extra);
        let o = tessera(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        latents.push(
            candle_core::safetensors::load(&out, &candle_core::Device::Cpu).unwrap()["latents"]
                .clone(),
        );
    }
    assert_eq!(max_abs_diff(&latents[0], &latents[1]), 0.0);
}

/// A one-step 128x128 render of the tiny model under `--max-memory budget`.
fn small_budget_render<'a>(model: &'a Path, png: &'a Path, budget: &'a str) -> Vec<&'a str> {
    vec![
        "render",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "a cat",
        "--width",
        "128",
        "--height",
        "128",
        "--steps",
        "1",
        "--max-memory",
        budget,
        "--out",
        png.to_str().unwrap(),
    ]
}

#[test]
fn an_impossible_memory_budget_is_refused_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let png = tmp.path().join("out.png");
    let model = tiny_model_dir();
    let args = small_budget_render(&model, &png, "20M");
    expect_input_error(
        &args,
        &["canvas.max_memory", "cannot be met", "--max-memory"],
    );
    assert!(!png.exists(), "no output may be written");
    let bad_size = small_budget_render(&model, &png, "lots");
    expect_input_error(&bad_size, &["canvas.max_memory", "not a memory size"]);
}

#[test]
fn a_memory_budget_is_reported_with_its_choices_and_estimates() {
    let tmp = tempfile::tempdir().unwrap();
    let png = tmp.path().join("out.png");
    let model = tiny_model_dir();
    let mut args = small_budget_render(&model, &png, "1G");
    args.push("--json");
    let o = tessera(&args);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    let phases = json["phases"].as_array().expect("phases");
    let names: Vec<&str> = phases.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["encode prompts", "canvas denoise", "decode"]);
    assert!(phases
        .iter()
        .all(|p| p["peak_rss_bytes"].as_u64() > Some(0)));
    assert!(
        json["estimate"]["canvas_denoise"].as_u64() > Some(0),
        "{json}"
    );
    assert_eq!(json["model_loads"]["vae decoder"], 1, "{json}");
    assert!(
        err.contains("memory budget 1024.0 MiB: the settings fit as given"),
        "{err}"
    );
    // The phase table shows each measured peak beside its estimate.
    let canvas = err
        .lines()
        .find(|l| l.starts_with("canvas denoise"))
        .unwrap_or_else(|| panic!("no canvas phase in {err}"));
    assert_eq!(canvas.matches("MiB").count(), 2, "{canvas}");
}

#[test]
fn an_interrupt_during_a_tiled_decode_exits_130_and_writes_nothing() {
    use std::io::BufRead;
    let tmp = tempfile::tempdir().unwrap();
    let latents = tmp.path().join("latents.safetensors");
    let z = tessera::noise::NoiseSource::noise(
        &mut tessera::noise::SeededNoise::new(3),
        &(1, 4, 160, 160).into(),
    )
    .unwrap();
    candle_core::safetensors::save(
        &[("latents".to_string(), z)].into_iter().collect(),
        &latents,
    )
    .unwrap();
    let out = tmp.path().join("big.png");
    let model = tiny_model_dir();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["decode", latents.to_str().unwrap(), "--model"])
        .arg(&model)
        .args(["--out", out.to_str().unwrap(), "--tile", "64"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupt once the tiled decode has started (it says so), as a user's Ctrl-C would.
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let started = lines.find(|l| l.as_ref().is_ok_and(|l| l.starts_with("decoding")));
    assert!(started.is_some(), "the decode never said it started");
    std::thread::sleep(std::time::Duration::from_millis(300));
    // SAFETY: sending SIGINT to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let rest: Vec<String> = lines.map_while(|l| l.ok()).collect();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{rest:?}");
    assert!(
        rest.iter().any(|l| l.contains("interrupted")),
        "stderr should say it was interrupted: {rest:?}"
    );
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!out.exists(), "a partial output was written: {left:?}");
    assert!(
        left.iter().all(|n| n == "latents.safetensors"),
        "files left behind: {left:?}"
    );
}

#[test]
fn a_non_square_sample_size_sets_the_native_size() {
    // diffusers allows `sample_size = [height, width]`; the tiny model with [24, 40] is a
    // 320x192 model (8x VAE).
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("wide");
    let src = tiny_model_dir();
    std::fs::create_dir_all(&model).unwrap();
    for part in ["text_encoder", "tokenizer", "scheduler"] {
        std::os::unix::fs::symlink(src.join(part), model.join(part)).unwrap();
    }
    for (part, size) in [("unet", "[24, 40]"), ("vae", "[192, 320]")] {
        std::fs::create_dir_all(model.join(part)).unwrap();
        let weights = "diffusion_pytorch_model.safetensors";
        std::os::unix::fs::symlink(src.join(part).join(weights), model.join(part).join(weights))
            .unwrap();
        let mut cfg: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(src.join(part).join("config.json")).unwrap(),
        )
        .unwrap();
        cfg["sample_size"] = serde_json::from_str(size).unwrap();
        std::fs::write(model.join(part).join("config.json"), cfg.to_string()).unwrap();
    }
    std::fs::copy(src.join("model_index.json"), model.join("model_index.json")).unwrap();
    let m = model.to_str().unwrap();
    let o = tessera(&["model", "info", m, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let info: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(info["native_size"], serde_json::json!([320, 192]));
    let spec = write_spec(
        tmp.path(),
        "[canvas]\nsteps = 2\n[prompt]\ntext = \"a wide view\"\n[guide]\nsteps = 2\n",
    );
    let o = tessera(&["plan", &spec, "--model", m, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (&plan["width"], &plan["height"]),
        (&320.into(), &192.into())
    );
    assert_eq!(plan["window"], serde_json::json!([320, 192]));
    assert_eq!(
        (&plan["guide"]["width"], &plan["guide"]["height"]),
        (&320.into(), &192.into())
    );
    // A wider canvas keeps the native window and gets a guide of its own aspect inside 320x192.
    let wide = tmp.path().join("wider.toml");
    std::fs::write(
        &wide,
        "[canvas]\nwidth = 640\nheight = 192\n[prompt]\ntext = \"x\"\n[guide]\n",
    )
    .unwrap();
    let o = tessera(&["plan", wide.to_str().unwrap(), "--model", m, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(plan["window"], serde_json::json!([320, 192]));
    assert_eq!(
        (&plan["guide"]["width"], &plan["guide"]["height"]),
        (&320.into(), &96.into())
    );
    let png = tmp.path().join("wide.png");
    let o = tessera(&[
        "render",
        &spec,
        "--model",
        m,
        "--out",
        png.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let img = image::open(&png).unwrap();
    assert_eq!((img.width(), img.height()), (320, 192));
}
