//! The canvas end to end on the bundled tiny model: `tessera plan` counts, and a 2048x1024
//! banner with a guide pass rendered through the CLI (2K wide; half the height of a square 2K
//! poster keeps CI time in bounds: the exact VAE attention over every latent pixel grows with
//! the square of the pixel count).

use std::process::{Command, Output};

fn tessera(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .output()
        .expect("run tessera")
}

const POSTER: &str = r#"
[canvas]
width = 2048
height = 1024
seed = 3
steps = 2
scheduler = "ddim"

[prompt]
text = "a lighthouse at dusk, poster"

[tiles]
size = 512
overlap = 128
vae = 512

[[region]]
rect = [0, 0, 2048, 256]
prompt = "a glowing sunset sky"

[guide]
steps = 2
strength = 0.5
"#;

#[test]
fn plan_counts_25_windows_per_step_for_a_2k_canvas() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = tmp.path().join("plain.toml");
    std::fs::write(&spec, "[canvas]\nwidth = 2048\nheight = 2048\nsteps = 10\n[prompt]\ntext = \"x\"\n[tiles]\nsize = 512\noverlap = 128\n").unwrap();
    let o = tessera(&["plan", spec.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(plan["windows_per_step"], 25);
    assert_eq!(plan["unet_evaluations"], 250);
    assert!(plan["estimated_peak_bytes"].as_u64().unwrap() > 0);
    let human = tessera(&["plan", spec.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&human.stdout).contains("windows per step:  25"));
}

#[test]
fn a_2k_banner_with_a_guide_renders_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = tmp.path().join("poster.toml");
    let emblem = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/canvases/assets/sun-emblem.png"
    );
    let image_region =
        format!("[[region]]\nrect = [1024, 512, 512, 512]\nimage = {emblem:?}\nstrength = 0.5\n");
    std::fs::write(&spec, format!("{POSTER}\n{image_region}")).unwrap();
    let o = tessera(&["render", spec.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let out = image::open(tmp.path().join("poster.png")).unwrap();
    assert_eq!((out.width(), out.height()), (2048, 1024));
    let guide = image::open(tmp.path().join("poster.guide.png")).unwrap();
    assert_eq!(
        (guide.width(), guide.height()),
        (256, 128),
        "the canvas's aspect inside the tiny model's native size"
    );
    assert!(err.contains("windows per step"), "{err}");
    // One load of each model: the decoder serves guide and canvas, the encoder the guide and
    // the image region.
    assert!(
        err.contains("models loaded: text encoder x1, unet x1, vae decoder x1, vae encoder x1"),
        "{err}"
    );
    // The PNG carries the resolved spec and the A1111 parameters.
    let bytes = std::fs::read(tmp.path().join("poster.png")).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains("Seed: 3") && text.contains("width = 2048"));
}
