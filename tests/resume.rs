//! Long renders: a render killed with SIGKILL (during the canvas pass, during the guide pass)
//! and resumed writes exactly the bytes of an uninterrupted run; a checkpoint of another
//! render is refused; previews appear at their steps and leave the output unchanged.

use crate::common;

use common::{tessera_bin, tiny_model_dir};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A multistep scheduler (DPM++ 2M keeps the previous estimate) and a guide pass, on a canvas
/// of 4 windows, so a kill can land inside either pass.
const SPEC: &str = r#"
[canvas]
width = 384
height = 256
steps = 10
scheduler = "dpm++2m"
seed = 7

[prompt]
text = "a lighthouse on a cliff at dusk"

[tiles]
size = 256
overlap = 128

[guide]
size = [192, 128]
steps = 10
strength = 0.7
"#;

/// Euler-ancestral draws fresh noise every step: its stream position is in the checkpoint.
const ANCESTRAL: &str = r#"
[canvas]
width = 256
height = 256
steps = 12
scheduler = "euler-a"
seed = 11

[prompt]
text = "a hot air balloon"
"#;

fn setup() -> (tempfile::TempDir, PathBuf) {
    setup_with(SPEC)
}

fn setup_with(body: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("poster.toml");
    let model = tiny_model_dir();
    let body = format!("model = {:?}\n{body}", model.display().to_string());
    std::fs::write(&spec, body).unwrap();
    (dir, spec)
}

fn render(spec: &Path, extra: &[&str]) -> Output {
    Command::new(tessera_bin())
        .arg("render")
        .arg(spec)
        .args(extra)
        .output()
        .unwrap()
}

fn ok(o: Output) -> Output {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "render failed: {err}");
    o
}

/// The phase and next step of the checkpoint at `path`, if one is there.
fn checkpoint_at(path: &Path) -> Option<(String, usize)> {
    let t = candle_core::safetensors::load(path, &candle_core::Device::Cpu).ok()?;
    let meta: serde_json::Value =
        serde_json::from_slice(&t.get("meta")?.to_vec1::<u8>().ok()?).ok()?;
    Some((
        meta["phase"].as_str()?.to_string(),
        meta["next"].as_u64()? as usize,
    ))
}

/// Start a render, SIGKILL it once its checkpoint is in `phase` at step 3 or later (before
/// the pass ends), and return the checkpoint's step.
fn kill_during(spec: &Path, phase: &str) -> usize {
    let ckpt = spec.with_extension("checkpoint.safetensors");
    let mut child = Command::new(tessera_bin())
        .arg("render")
        .arg(spec)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if let Some((p, next)) = checkpoint_at(&ckpt) {
            if p == phase && next >= 3 {
                break;
            }
        }
        let status = child.try_wait().unwrap();
        assert!(
            status.is_none(),
            "the render ended before a {phase} kill: {status:?}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no {phase} checkpoint"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    // SAFETY: killing our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
    let (p, next) = checkpoint_at(&ckpt).expect("the checkpoint survives the kill");
    assert_eq!(p, phase, "killed in the wrong phase");
    assert!(next < 10, "the {phase} pass was already over");
    assert!(
        !spec.with_extension("png").exists(),
        "no output after a kill"
    );
    next
}

/// The uninterrupted run's output bytes (moved aside), and its guide picture removed, so the
/// interrupted run writes to the same path (the path is part of the PNG's metadata).
fn reference(spec: &Path) -> Vec<u8> {
    ok(render(spec, &[]));
    let png = spec.with_extension("png");
    let bytes = std::fs::read(&png).unwrap();
    std::fs::remove_file(&png).unwrap();
    let _ = std::fs::remove_file(spec.with_extension("guide.png"));
    assert!(
        !spec.with_extension("checkpoint.safetensors").exists(),
        "a finished render removes its checkpoint"
    );
    bytes
}

fn resumed_matches(spec: &Path, want: &[u8], phase: &str) {
    let err = String::from_utf8_lossy(&ok(render(spec, &["--resume"])).stderr).into_owned();
    assert!(err.contains("resuming from"), "{err}");
    let got = std::fs::read(spec.with_extension("png")).unwrap();
    assert!(
        got == want,
        "a render resumed from the {phase} pass differs from an uninterrupted one"
    );
    assert!(!spec.with_extension("checkpoint.safetensors").exists());
}

#[test]
fn a_render_killed_in_the_canvas_pass_resumes_to_the_same_bytes() {
    let (_dir, spec) = setup();
    let want = reference(&spec);
    kill_during(&spec, "canvas");
    // A checkpoint of another render (here: another seed) is refused, and kept.
    let o = render(&spec, &["--resume", "--seed", "8"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("checkpoint.safetensors") && err.contains("different render"),
        "{err}"
    );
    assert!(spec.with_extension("checkpoint.safetensors").exists());
    resumed_matches(&spec, &want, "canvas");
}

#[test]
fn an_ancestral_render_killed_mid_canvas_resumes_to_the_same_bytes() {
    let (_dir, spec) = setup_with(ANCESTRAL);
    let want = reference(&spec);
    kill_during(&spec, "canvas");
    resumed_matches(&spec, &want, "canvas (euler-a)");
}

#[test]
fn a_render_killed_in_the_guide_pass_resumes_to_the_same_bytes() {
    let (_dir, spec) = setup();
    let want = reference(&spec);
    kill_during(&spec, "guide");
    resumed_matches(&spec, &want, "guide");
}

#[test]
fn previews_appear_at_their_steps_and_leave_the_output_unchanged() {
    let (_dir, spec) = setup();
    let want = reference(&spec);
    let o = ok(render(&spec, &["--preview-every", "5"]));
    let err = String::from_utf8_lossy(&o.stderr);
    let steps: Vec<&str> = err
        .lines()
        .filter_map(|l| l.strip_prefix("preview: step "))
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    // The canvas pass runs schedule steps 4..=10 (strength 0.7 of 10 steps); previews come at
    // the steps that are multiples of 5.
    assert_eq!(steps, ["5", "10"], "{err}");
    let preview = image::open(spec.with_extension("preview.png")).unwrap();
    assert_eq!((preview.width(), preview.height()), (96, 64));
    assert!(
        std::fs::read(spec.with_extension("png")).unwrap() == want,
        "previews changed the output"
    );
}
