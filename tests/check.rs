//! `tessera check`: guide fidelity, seams, colour drift and golden regression, through the
//! library API and the CLI (exit codes 0 / 1 / 2).

use image::{Rgb, RgbImage};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tessera::check::{self, metrics, GoldenThresholds, Thresholds};
use tessera::geometry::{self, Rect};

const SIDE: u32 = 320;
const GUIDE: u32 = 80;
/// The spec the synthetic "render" was planned with: 128 px windows, 32 px overlap, so the
/// windows start at 0, 96 and 192 px on both axes.
const SPEC: &str =
    "[canvas]\nwidth = 320\nheight = 320\n[tiles]\nsize = [128, 128]\noverlap = 32\n";

/// Smooth synthetic content (no edges), different per channel.
fn smooth(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let (x, y) = (x as f64, y as f64);
        let base =
            120.0 + 50.0 * (x / 23.0).sin() * (y / 31.0).cos() + 20.0 * ((x + y) / 41.0).sin();
        let px = [
            base + 10.0 * (y / 50.0).sin(),
            base * 0.8 + 30.0,
            200.0 - base * 0.5,
        ];
        Rgb(px.map(|v| v.round().clamp(0.0, 255.0) as u8))
    })
}

/// [`smooth`] plus fine texture (periods of 13 to 19 px), which a blur visibly softens. Its
/// phase wanders along both axes, as texture in a picture does: a texture that is
/// phase-locked along a whole boundary line reads as a seam (see README).
fn detailed(w: u32, h: u32) -> RgbImage {
    let mut img = smooth(w, h);
    for (x, y, p) in img.enumerate_pixels_mut() {
        let (x, y) = (x as f64, y as f64);
        let t = 30.0
            * (x / 2.1 + 2.5 * (y / 9.0).sin()).sin()
            * (y / 3.0 + 2.5 * (x / 11.0).sin()).sin();
        for c in 0..3 {
            p[c] = (p[c] as f64 + t).round().clamp(0.0, 255.0) as u8;
        }
    }
    img
}

fn plan_windows() -> Vec<Rect> {
    let side = SIDE as usize / 8;
    geometry::grid(side, side, (16, 16), 4)
        .into_iter()
        .map(|r| r.scaled(8))
        .collect()
}

fn guide_of(img: &RgbImage) -> RgbImage {
    metrics::downscale_area(img, GUIDE, GUIDE)
}

fn box_blur(img: &RgbImage) -> RgbImage {
    let (w, h) = img.dimensions();
    RgbImage::from_fn(w, h, |x, y| {
        let mut acc = [0u32; 3];
        for dy in -1i64..=1 {
            for dx in -1i64..=1 {
                let sx = (x as i64 + dx).clamp(0, w as i64 - 1) as u32;
                let sy = (y as i64 + dy).clamp(0, h as i64 - 1) as u32;
                let p = img.get_pixel(sx, sy);
                for c in 0..3 {
                    acc[c] += p[c] as u32;
                }
            }
        }
        Rgb(acc.map(|v| ((v as f64) / 9.0).round() as u8))
    })
}

/// The clean image with a one-pixel-wide brightness step in column `x`.
fn with_seam_line(img: &RgbImage, x: u32, step: u8) -> RgbImage {
    let mut out = img.clone();
    for y in 0..out.height() {
        let p = out.get_pixel_mut(x, y);
        for c in 0..3 {
            p[c] = p[c].saturating_add(step);
        }
    }
    out
}

#[test]
fn check_identical_images_give_infinite_psnr_and_ssim_one() {
    let img = smooth(SIDE, SIDE);
    let r = check::guide_check(&img, &img, &plan_windows(), &Thresholds::default()).unwrap();
    assert_eq!(r.psnr, f64::INFINITY);
    assert_eq!(r.ssim, Some(1.0));
    assert!(r.pass, "{r}");
    let json: serde_json::Value = serde_json::to_value(&r).unwrap();
    assert!(json["psnr"].is_null(), "infinite PSNR is JSON null");
    assert_eq!(json["ssim"], 1.0);
    let g = check::golden_check(&img, &img, &GoldenThresholds::default()).unwrap();
    assert!(g.pass && g.psnr.is_infinite() && g.ssim == Some(1.0) && g.max_abs_error == 0);
}

#[test]
fn check_clean_render_passes_and_has_every_boundary() {
    let img = smooth(SIDE, SIDE);
    let r = check::guide_check(
        &img,
        &guide_of(&img),
        &plan_windows(),
        &Thresholds::default(),
    )
    .unwrap();
    assert!(r.pass, "{r}");
    let positions: Vec<&str> = r.seams.iter().map(|s| s.position.as_str()).collect();
    assert_eq!(
        positions,
        ["x=96", "x=128", "x=192", "x=224", "y=96", "y=128", "y=192", "y=224"]
    );
    assert!(r
        .seams
        .iter()
        .all(|s| (s.boundary.from, s.boundary.to) == (0, 320)));
    assert_eq!(r.drift.len(), 9);
    let worst = r.seams.iter().filter_map(|s| s.score).fold(0.0, f64::max);
    eprintln!("clean: worst seam score {worst:.3}, PSNR {:.2} dB", r.psnr);
    assert!(worst < 1.2, "{worst}");
}

#[test]
fn check_a_one_pixel_step_on_a_boundary_fails_and_is_named() {
    let clean = smooth(SIDE, SIDE);
    let guide = guide_of(&clean);
    let seamed = with_seam_line(&clean, 192, 24);
    let r = check::guide_check(&seamed, &guide, &plan_windows(), &Thresholds::default()).unwrap();
    assert!(!r.pass);
    let failed: Vec<&str> = r
        .seams
        .iter()
        .filter(|s| !s.pass)
        .map(|s| s.position.as_str())
        .collect();
    assert_eq!(failed, ["x=192"], "{r}");
    let s = r.seams.iter().find(|s| s.position == "x=192").unwrap();
    eprintln!("seam at x=192: score {:.2}", s.score.unwrap());
    assert!(
        r.failures.iter().any(|f| f.contains("x=192")),
        "{:?}",
        r.failures
    );
    // The line is thin: fidelity and colour still pass.
    assert!(r.psnr > 30.0 && r.drift.iter().all(|d| d.pass), "{r}");
}

#[test]
fn check_a_colour_shifted_window_fails_drift_and_is_named() {
    let clean = smooth(SIDE, SIDE);
    let guide = guide_of(&clean);
    let mut shifted = clean.clone();
    for y in 0..128 {
        for x in 0..128 {
            let p = shifted.get_pixel_mut(x, y);
            p[0] = p[0].saturating_add(25);
            p[2] = p[2].saturating_sub(25);
        }
    }
    let r = check::guide_check(&shifted, &guide, &plan_windows(), &Thresholds::default()).unwrap();
    assert!(!r.pass);
    for d in &r.drift {
        eprintln!("window #{} {}: ΔE {:.2}", d.window, d.rect, d.delta_e);
    }
    let failed: Vec<_> = r.drift.iter().filter(|d| !d.pass).collect();
    assert_eq!(failed.len(), 1, "{r}");
    assert_eq!(failed[0].window, 0);
    assert_eq!(
        (
            failed[0].rect.x,
            failed[0].rect.y,
            failed[0].rect.w,
            failed[0].rect.h
        ),
        (0, 0, 128, 128)
    );
    assert!(failed[0].delta_e > 15.0);
    assert!(
        r.failures
            .iter()
            .any(|f| f.contains("window #0") && f.contains("128x128 at (0, 0)")),
        "{:?}",
        r.failures
    );
}

#[test]
fn check_a_slightly_blurred_render_passes() {
    let clean = detailed(SIDE, SIDE);
    let guide = guide_of(&clean);
    let blurred = box_blur(&clean);
    let r = check::guide_check(&blurred, &guide, &plan_windows(), &Thresholds::default()).unwrap();
    let worst = r.seams.iter().filter_map(|s| s.score).fold(0.0, f64::max);
    eprintln!(
        "blurred: PSNR {:.2} dB, SSIM {:.4}, worst seam {worst:.3}",
        r.psnr,
        r.ssim.unwrap()
    );
    assert!(r.pass, "{r}");
    // A 3x3 box blur of the textured picture, seen through a 4x area downscale: 40..50 dB
    // (measured 44.5).
    assert!((40.0..50.0).contains(&r.psnr), "PSNR {}", r.psnr);
    assert!(r.ssim.unwrap() > 0.98);
    // Golden mode sees the blur at full resolution.
    let g = check::golden_check(&blurred, &clean, &GoldenThresholds::default()).unwrap();
    eprintln!(
        "blurred golden: PSNR {:.2} dB, max abs {}",
        g.psnr, g.max_abs_error
    );
    assert!(g.psnr > 35.0 && g.max_abs_error > 0);
}

#[test]
fn check_ssim_agrees_with_scikit_image() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ssim");
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let pairs = expected["pairs"].as_array().unwrap();
    assert_eq!(pairs.len(), 3);
    for p in pairs {
        let load = |k: &str| {
            image::open(dir.join(p[k].as_str().unwrap()))
                .unwrap()
                .to_rgb8()
        };
        let (a, b) = (load("a"), load("b"));
        let ssim = metrics::ssim_rgb(&a, &b).unwrap();
        let psnr = metrics::psnr(&a, &b);
        let (want_ssim, want_psnr) = (p["ssim"].as_f64().unwrap(), p["psnr"].as_f64().unwrap());
        eprintln!(
            "{}: SSIM {ssim:.9} vs skimage {want_ssim:.9} (diff {:.1e}); PSNR {psnr:.6} vs {want_psnr:.6}",
            p["name"],
            (ssim - want_ssim).abs()
        );
        assert!((ssim - want_ssim).abs() <= 1e-3, "{}", p["name"]);
        assert!((psnr - want_psnr).abs() <= 1e-6, "{}", p["name"]);
    }
}

// ---- CLI ----

fn tessera(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .output()
        .expect("run tessera")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A fake render: output PNG with the spec in its `tessera` chunk, and its guide.
fn write_render(dir: &Path, name: &str, img: &RgbImage, guide: &RgbImage) -> (PathBuf, PathBuf) {
    let out = dir.join(format!("{name}.png"));
    let g = dir.join(format!("{name}.guide.png"));
    tessera::output::save_png(&out, img, &[("tessera", SPEC.to_string())]).unwrap();
    tessera::output::save_png(&g, guide, &[]).unwrap();
    (out, g)
}

fn json_of(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

#[test]
fn check_cli_exit_codes_and_json() {
    let tmp = tempfile::tempdir().unwrap();
    let clean = smooth(SIDE, SIDE);
    let guide = guide_of(&clean);
    let (good, good_guide) = write_render(tmp.path(), "good", &box_blur(&clean), &guide);
    let heat = tmp.path().join("heat.png");

    // Passing pair: windows from the PNG's own chunk.
    let o = tessera(&[
        "check",
        s(&good),
        "--guide",
        s(&good_guide),
        "--json",
        "--heatmap",
        s(&heat),
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let j = json_of(&o);
    assert_eq!(j["pass"], true);
    assert!(j["psnr"].as_f64().unwrap() > 40.0);
    assert!(j["ssim"].as_f64().unwrap() > 0.99);
    assert_eq!(j["seams"].as_array().unwrap().len(), 8);
    assert_eq!(j["drift"].as_array().unwrap().len(), 9);
    assert!(j["windows_source"].as_str().unwrap().contains("chunk"));
    let h = image::open(&heat).unwrap();
    assert_eq!((h.width(), h.height()), (SIDE, SIDE));

    // The human table.
    let o = tessera(&["check", s(&good), "--guide", s(&good_guide)]);
    assert_eq!(o.status.code(), Some(0));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("PSNR") && text.contains("result: PASS"),
        "{text}"
    );

    // Failing pair: a seam on x=192, named in the JSON.
    let (bad, bad_guide) =
        write_render(tmp.path(), "bad", &with_seam_line(&clean, 192, 24), &guide);
    let o = tessera(&["check", s(&bad), "--guide", s(&bad_guide), "--json"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let j = json_of(&o);
    assert_eq!(j["pass"], false);
    let failed: Vec<&str> = j["seams"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["pass"] == false)
        .map(|s| s["position"].as_str().unwrap())
        .collect();
    assert_eq!(failed, ["x=192"]);
    // ... which a looser threshold lets through.
    let o = tessera(&[
        "check",
        s(&bad),
        "--guide",
        s(&bad_guide),
        "--max-seam",
        "1000",
    ]);
    assert_eq!(o.status.code(), Some(0));

    // An explicit --spec wins over the chunk; a spec of another canvas size is bad input.
    let spec = tmp.path().join("poster.toml");
    std::fs::write(&spec, SPEC.replace("width = 320", "width = 640")).unwrap();
    let o = tessera(&[
        "check",
        s(&good),
        "--guide",
        s(&good_guide),
        "--spec",
        s(&spec),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("poster.toml"));

    // Bad input: a missing file, a guide of another aspect ratio, no reference.
    let missing = tmp.path().join("nope.png");
    let o = tessera(&["check", s(&missing), "--guide", s(&good_guide)]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("nope.png"));
    let o = tessera(&["check", s(&good), "--guide", s(&missing)]);
    assert_eq!(o.status.code(), Some(2));
    let odd = tmp.path().join("odd.png");
    tessera::output::save_png(&odd, &metrics::downscale_area(&clean, 80, 40), &[]).unwrap();
    let o = tessera(&["check", s(&good), "--guide", s(&odd)]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("aspect"));
    assert_eq!(tessera(&["check", s(&good)]).status.code(), Some(2));
    // --max-abs-error belongs to golden checks.
    let o = tessera(&[
        "check",
        s(&good),
        "--guide",
        s(&good_guide),
        "--max-abs-error",
        "3",
    ]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn check_cli_without_a_plan_uses_the_whole_image() {
    let tmp = tempfile::tempdir().unwrap();
    let clean = smooth(SIDE, SIDE);
    let out = tmp.path().join("plain.png");
    let guide = tmp.path().join("plain.guide.png");
    tessera::output::save_png(&out, &clean, &[]).unwrap();
    tessera::output::save_png(&guide, &guide_of(&clean), &[]).unwrap();
    let o = tessera(&["check", s(&out), "--guide", s(&guide), "--json"]);
    assert_eq!(o.status.code(), Some(0));
    let j = json_of(&o);
    assert_eq!(j["seams"].as_array().unwrap().len(), 0);
    assert_eq!(j["drift"].as_array().unwrap().len(), 1);
    assert!(j["notes"][0].as_str().unwrap().contains("whole image"));
}

#[test]
fn check_cli_golden_regression() {
    let tmp = tempfile::tempdir().unwrap();
    let clean = smooth(SIDE, SIDE);
    let a = tmp.path().join("a.png");
    let b = tmp.path().join("b.png");
    let c = tmp.path().join("c.png");
    tessera::output::save_png(&a, &clean, &[]).unwrap();
    tessera::output::save_png(&b, &clean, &[]).unwrap();
    let mut other = clean.clone();
    other.put_pixel(5, 5, Rgb([255, 0, 255]));
    tessera::output::save_png(&c, &other, &[]).unwrap();

    let o = tessera(&["check", s(&a), "--against", s(&b), "--json"]);
    assert_eq!(o.status.code(), Some(0));
    let j = json_of(&o);
    assert!(j["psnr"].is_null() && j["ssim"] == 1.0 && j["max_abs_error"] == 0);

    // One odd pixel: PSNR and SSIM stay high, the max abs error catches it when asked to.
    assert_eq!(
        tessera(&["check", s(&c), "--against", s(&a)]).status.code(),
        Some(0)
    );
    let o = tessera(&["check", s(&c), "--against", s(&a), "--max-abs-error", "8"]);
    assert_eq!(o.status.code(), Some(1));
    let o = tessera(&["check", s(&c), "--against", s(&a), "--min-psnr", "90"]);
    assert_eq!(o.status.code(), Some(1));

    let small = tmp.path().join("small.png");
    tessera::output::save_png(&small, &guide_of(&clean), &[]).unwrap();
    let o = tessera(&["check", s(&a), "--against", s(&small)]);
    assert_eq!(o.status.code(), Some(2));
    // --max-seam makes no sense against a golden image.
    let o = tessera(&["check", s(&a), "--against", s(&b), "--max-seam", "2"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn check_after_render_uses_the_render_plan() {
    use tessera::checking::{after_render, verdict};
    use tessera::plan::Plan;
    use tessera::spec::{self, SpecFile};
    use tessera::RenderReport;
    let tmp = tempfile::tempdir().unwrap();
    let spec_path = tmp.path().join("poster.toml");
    let file = SpecFile::parse(SPEC, &spec_path).unwrap();
    let settings = spec::resolve(Some((&spec_path, file)), &Default::default()).unwrap();
    let plan = Plan::new(&settings, (128, 128)).unwrap();
    let clean = smooth(SIDE, SIDE);
    let guide = guide_of(&clean);
    let (good, good_guide) = write_render(tmp.path(), "good", &clean, &guide);
    let (bad, bad_guide) = write_render(tmp.path(), "bad", &with_seam_line(&clean, 96, 30), &guide);
    let report = |output: PathBuf, guide: Option<PathBuf>| RenderReport {
        output,
        guide,
        plan: plan.clone(),
        estimate: Default::default(),
        scheduler: tessera::scheduler::SchedulerKind::Ddim,
        phases: Default::default(),
        loads: Default::default(),
        device: "cpu".into(),
    };
    let checked = |r: RenderReport| after_render(&r).unwrap().expect("a guide to check");
    let good_check = checked(report(good.clone(), Some(good_guide)));
    assert!(good_check.pass);
    verdict(good_check.pass, &good_check.failures).unwrap();
    let bad_check = checked(report(bad, Some(bad_guide)));
    let e = verdict(bad_check.pass, &bad_check.failures).unwrap_err();
    assert_eq!(e.exit_code(), 1);
    assert!(e.to_string().contains("x=96"), "{e}");
    // No guide picture: skipped, not failed.
    assert!(after_render(&report(good, None)).unwrap().is_none());
}
