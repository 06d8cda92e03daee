//! The memory budget: estimates that follow the window, not the canvas, and `--max-memory`
//! choosing settings or refusing. Measured peaks are benchmarks (BENCHMARKS.md), not tests.

use std::path::Path;
use tessera::budget::{self, Estimate, MemoryFacts, ModelFacts};
use tessera::plan::Plan;
use tessera::spec::{self, Overrides, SpecFile};

/// A plan and its memory estimate, as the render makes them.
fn estimated(s: &spec::Settings, facts: &ModelFacts) -> Estimate {
    let plan = Plan::new(s, facts.native_size).unwrap();
    budget::estimate(&plan, &facts.memory, s)
}

/// Full-size SD 1.5, as `tessera plan --json` reads it from the weight headers
/// (`model_memory` of `tessera model synth --arch sd15`).
fn sd15() -> ModelFacts {
    ModelFacts {
        native_size: (512, 512),
        memory: MemoryFacts {
            text_encoder_params: 123_060_480,
            unet_params: 859_520_964,
            unet_largest_layer_params: 49_164_800,
            // up_blocks.1's first resnet conv1: 2560 -> 1280 channels, 3x3.
            unet_largest_tensor_params: 29_491_200,
            unet_channels: 320,
            unet_heads: 8,
            vae_encoder_params: 34_163_664,
            vae_decoder_params: 49_490_199,
            vae_channels: 256,
            vae_top_channels: 128,
            vae_weight_bytes: 4,
            vae_mid_channels: 512,
            // The estimate of candle's path (GPUs, CPUs without AVX-512): the larger one.
            attention_scores: true,
            device_free: None,
            device_used: 0,
        },
    }
}

fn settings(side: usize, max_memory: Option<&str>, extra: &str) -> spec::Settings {
    let text = format!(
        "[canvas]\nwidth = {side}\nheight = {side}\nsteps = 1\n{extra}\n\
         [prompt]\ntext = \"a poster\"\n[tiles]\nsize = 512\noverlap = 128\n\
         [guide]\nsteps = 1\nstrength = 1.0\n"
    );
    let path = Path::new("poster.toml");
    let file = SpecFile::parse(&text, path).unwrap();
    let o = Overrides {
        model: Some("unused".into()),
        max_memory: max_memory.map(String::from),
        ..Default::default()
    };
    spec::resolve(Some((path, file)), &o).unwrap()
}

const MIB: u64 = 1 << 20;

#[test]
fn canvas_estimate_follows_the_window_not_the_canvas() {
    let facts = sd15();
    let stream = "stream_weights = true";
    let small = estimated(&settings(512, None, stream), &facts);
    let large = estimated(&settings(2048, None, stream), &facts);
    let ratio = large.canvas_denoise as f64 / small.canvas_denoise as f64;
    assert!(
        (1.0..1.05).contains(&ratio),
        "canvas phase grows {ratio:.3}x"
    );
    // Held weights cost the whole UNet (3.4 GB in f32); streamed, about two layers.
    let held = estimated(&settings(512, None, ""), &facts);
    assert!(held.canvas_denoise > small.canvas_denoise + 3000 * MIB);
}

#[test]
fn a_budget_that_fits_changes_only_the_decoder_stay() {
    let s = settings(2048, Some("64G"), "");
    let fit = budget::fit(&s, &sd15()).unwrap();
    let (fitted, chosen) = (&fit.settings, &fit.chosen);
    // Under any budget the decoder is read again rather than held through the canvas pass;
    // windows may share UNet evaluations (that raises the estimate by at most 10%).
    assert_eq!(chosen[0], "VAE decoder read again for the final decode");
    assert!(
        chosen[1..]
            .iter()
            .all(|c| c.ends_with("windows per UNet evaluation")),
        "{chosen:?}"
    );
    assert!(!fitted.keep_decoder && s.keep_decoder);
    assert!(!fitted.stream_weights);
    assert!(fit.estimate.peak() < 64 << 30);
}

#[test]
fn an_800m_budget_streams_weights_and_fits_with_headroom() {
    let s = settings(2048, Some("800M"), "");
    let fit = budget::fit(&s, &sd15()).unwrap();
    let (fitted, plan, chosen) = (&fit.settings, &fit.plan, &fit.chosen);
    assert!(fitted.stream_weights, "{chosen:?}");
    assert!(chosen.iter().any(|c| c.contains("streamed")), "{chosen:?}");
    assert!(fit.estimate.peak() <= 720 * MIB, "{:?}", fit.estimate);
    // Only what was needed: the window and dtype are left alone.
    assert_eq!(fitted.precision, tessera::choices::Precision::F32);
    assert_eq!(plan.window, (512, 512));
}

#[test]
fn an_impossible_budget_is_refused_up_front_naming_the_field_and_the_fix() {
    let s = settings(2048, Some("200M"), "");
    let err = budget::fit(&s, &sd15()).unwrap_err().to_string();
    assert!(err.contains("canvas.max_memory"), "{err}");
    assert!(err.contains("cannot be met"), "{err}");
    assert!(err.contains("raise --max-memory to at least"), "{err}");
}

#[test]
fn memory_sizes_parse_like_cgroup_limits() {
    assert_eq!(tessera::units::parse_bytes("800M"), Some(800 * MIB));
    assert_eq!(tessera::units::parse_bytes("800MB"), Some(800 * MIB));
    assert_eq!(tessera::units::parse_bytes("800 MiB"), Some(800 * MIB));
    assert_eq!(tessera::units::parse_bytes("1.5G"), Some(1536 * MIB));
    assert_eq!(tessera::units::parse_bytes("4096"), Some(4096));
    for bad in ["", "M", "-5M", "800X", "lots"] {
        assert_eq!(tessera::units::parse_bytes(bad), None, "{bad:?}");
    }
}

#[test]
fn an_image_region_counts_its_encode_in_the_canvas_phase() {
    let mut s = settings(2048, None, "stream_weights = true");
    s.tiles.vae = None; // encoded in one piece, a 2048 px region outweighs a streamed window
    let mut plan = Plan::new(&s, sd15().native_size).unwrap();
    let without = budget::estimate(&plan, &sd15().memory, &s).canvas_denoise;
    plan.image_regions.push(tessera::plan::ImageRegion {
        rect: tessera::geometry::Rect {
            y: 0,
            x: 0,
            h: 256,
            w: 256,
        },
        image: "region.png".into(),
        strength: 0.5,
    });
    let with = budget::estimate(&plan, &sd15().memory, &s).canvas_denoise;
    assert!(with > without, "{with} <= {without}");
}

/// Under a budget the tiled VAE's RAM stores and the window groups both grow to one ceiling,
/// so a 2K canvas's estimated peak is its 512 window's (measured peaks: BENCHMARKS.md), and
/// the stores' RAM is counted in the phases that hold it.
#[test]
fn a_2k_canvas_peaks_where_its_window_does_under_a_budget() {
    for (dtype, vae_bytes) in [("f32", 4), ("bf16", 2)] {
        let mut facts = sd15();
        facts.memory.vae_weight_bytes = vae_bytes;
        // The CPU's flash kernels hold no score chunks.
        facts.memory.attention_scores = false;
        let extra = format!("dtype = \"{dtype}\"");
        let fit = |side| budget::fit(&settings(side, Some("800M"), &extra), &facts).unwrap();
        let (window, canvas) = (fit(512), fit(2048));
        let ratio = canvas.estimate.peak() as f64 / window.estimate.peak() as f64;
        eprintln!(
            "{dtype}: window {:?}\n  2K {:?}, {ratio:.3}x",
            window.estimate, canvas.estimate
        );
        assert!(
            ratio <= 1.15,
            "{dtype}: the 2K peak is {ratio:.3}x the window's"
        );
        for f in [&window, &canvas] {
            assert!(f.estimate.peak() <= 720 * MIB, "{dtype}: {:?}", f.estimate);
            let granted = f.settings.vae_scratch.unwrap_or(0);
            assert!(granted > 0, "{dtype}: no RAM for the VAE's stores");
            let mut in_files = f.settings.clone();
            in_files.vae_scratch = Some(0);
            let without = budget::estimate(&f.plan, &facts.memory, &in_files).decode;
            assert!(
                f.estimate.decode > without,
                "{dtype}: the stores' {granted} bytes of RAM are not counted"
            );
        }
    }
}
