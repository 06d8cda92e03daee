//! Mixture-of-Diffusers parity with diffusers' community pipelines (fixtures f1, f2, f3):
//! canvas regions, a tiling grid, and an image region, step by step.

use crate::common;
use candle_core::{DType, IndexOp, Tensor};
use common::*;
use std::path::Path;
use tessera::facts::model_facts;
use tessera::geometry::{self, Rect};
use tessera::guidance::guided_eps;
use tessera::mixture::Window;
use tessera::models::ModelDir;
use tessera::noise::{NoiseSource, SeededNoise};
use tessera::pass::{self, Pass};
use tessera::passes::realize_windows;
use tessera::plan::Plan;
use tessera::render::encode_prompts;
use tessera::scheduler::{self, SchedulerKind};
use tessera::spec::{self, Overrides, SpecFile};
use tessera::{Cond, Placement, Quiet};

const F1_SPEC: &str = r#"
[canvas]
width = 384
height = 256
seed = 7
steps = 10
scheduler = "ddim"

[[region]]
rect = [0, 0, 256, 256]
prompt = "a red castle on a hill, oil painting"
guidance = 7.5

[[region]]
rect = [128, 0, 256, 256]
prompt = "a blue lake with snowy mountains"
guidance = 5.0
weight = 0.8
"#;

fn plan_of(spec_text: &str) -> (tessera::spec::Settings, Plan, ModelDir) {
    let path = Path::new("canvas.toml");
    let file = SpecFile::parse(spec_text, path).unwrap();
    let o = Overrides {
        model: Some(tiny_model_dir()),
        ..Default::default()
    };
    let settings = spec::resolve(Some((path, file)), &o).unwrap();
    let dir = ModelDir::open(tiny_model_dir()).unwrap();
    let plan = Plan::new(
        &settings,
        model_facts(&dir, &runtime()).unwrap().native_size,
    )
    .unwrap();
    (settings, plan, dir)
}

/// Run the canvas loop and compare every step with the fixture; returns the final latents.
/// `group`: windows per network evaluation (1: window by window; more: batched windows, which
/// must match the reference just the same).
fn run_and_check(
    name: &str,
    group: usize,
    f: &std::collections::HashMap<String, Tensor>,
    conds: &[Cond],
    windows: &[Window],
    after: impl FnMut(usize, f64, &dyn scheduler::Scheduler, Tensor) -> tessera::Result<Tensor>,
) -> Tensor {
    let dir = ModelDir::open(tiny_model_dir()).unwrap();
    let cfg = dir.scheduler_config().unwrap();
    let mut sched = scheduler::build(SchedulerKind::Ddim, &cfg, 10).unwrap();
    let unet = dir.load_unet(&runtime(), DType::F32).unwrap();
    let x = (get(f, "init_noise") * sched.init_noise_sigma()).unwrap();
    let (_, _, h, w) = x.dims4().unwrap();
    let job = Pass {
        group,
        predictor: &unet,
        windows,
        conds,
        canvas_px: (8 * w, 8 * h),
        observer: &Quiet,
    };
    let step_latents = get(f, "step_latents");
    let mut after = after;
    let mut first = None;
    let out = job
        .run(
            sched.as_mut(),
            x,
            0,
            &mut SeededNoise::new(0),
            |i, t, s, x| {
                let x = after(i, t, s, x)?;
                let reference = step_latents.i(i).unwrap();
                let rel = max_abs_diff(&x, &reference) / max_abs(&reference).max(1.0);
                eprintln!("{name} step {i}: rel diff {rel:.2e}");
                if rel > 1e-3 && first.is_none() {
                    first = Some((i, rel));
                }
                Ok(x)
            },
        )
        .unwrap();
    assert!(
        first.is_none(),
        "{name}: first diverging step (index, rel diff): {first:?}"
    );
    let reference = get(f, "final_latents");
    let rel = max_abs_diff(&out, &reference) / max_abs(&reference);
    eprintln!("{name}: final latents rel diff {rel:.2e}");
    assert!(rel <= 1e-3, "{name}: final rel diff {rel:e}");
    out
}

#[test]
fn f1_two_text_regions_match_mixture_canvas() {
    let f = fixture("f1_canvas");
    let (settings, plan, dir) = plan_of(F1_SPEC);
    assert_eq!(
        plan.windows.len(),
        2,
        "each region is one window of its own size"
    );
    for (k, w) in plan.windows.iter().enumerate() {
        let coords: Vec<i64> = get(&f, &format!("t2i.{k}.latent_coords"))
            .to_vec1()
            .unwrap();
        let r = w.rect;
        assert_eq!(
            coords,
            vec![
                r.y as i64,
                (r.y + r.h) as i64,
                r.x as i64,
                (r.x + r.w) as i64
            ]
        );
    }
    let windows = realize_windows(&plan.windows).unwrap();
    for (k, w) in windows.iter().enumerate() {
        let diff = max_abs_diff(&w.weights, &get(&f, &format!("t2i.{k}.weights_f64")));
        assert!(diff <= 1e-12, "region {k} weights differ by {diff:e}");
    }
    let conds = encode_prompts(&dir, &runtime(), &plan.prompts).unwrap();
    for (k, c) in conds.iter().enumerate() {
        assert_close(
            &format!("f1 region {k} embeddings"),
            &c.context,
            &get(&f, &format!("t2i.{k}.prompt_embeds")),
            1e-4,
        );
    }
    let _ = settings;
    run_and_check("f1", 1, &f, &conds, &windows, |_, _, _, x| Ok(x));
}

#[test]
fn f1_through_the_cli_with_init_noise() {
    let f = fixture("f1_canvas");
    let tmp = tempfile::tempdir().unwrap();
    let spec = tmp.path().join("canvas.toml");
    std::fs::write(
        &spec,
        format!(
            "model = {:?}\n{F1_SPEC}",
            tiny_model_dir().display().to_string()
        ),
    )
    .unwrap();
    let noise = tmp.path().join("noise.safetensors");
    candle_core::safetensors::save(
        &[("noise".to_string(), get(&f, "init_noise"))]
            .into_iter()
            .collect(),
        &noise,
    )
    .unwrap();
    let latents = tmp.path().join("latents.safetensors");
    let o = std::process::Command::new(tessera_bin())
        .args([
            "render",
            spec.to_str().unwrap(),
            "--init-noise",
            noise.to_str().unwrap(),
            "--save-latents",
            latents.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(tmp.path().join("canvas.png").is_file());
    let got = candle_core::safetensors::load(&latents, &candle_core::Device::Cpu).unwrap()
        ["latents"]
        .clone();
    let reference = get(&f, "final_latents");
    let rel = max_abs_diff(&got, &reference) / max_abs(&reference);
    eprintln!("f1 via CLI: final latents rel diff {rel:.2e}");
    assert!(rel <= 1e-3, "rel diff {rel:e}");
}

/// Quartic and constant region masks (fixture made by `tools/gen_mask_fixtures.py` from the
/// mask formulas of `mixture_canvas.py`): weights, then every step of the canvas.
#[test]
fn f4_quartic_and_constant_masks_match_mixture_canvas() {
    let f = fixture("f4_canvas_masks");
    let spec = r#"
[canvas]
width = 384
height = 256
seed = 5
steps = 10
scheduler = "ddim"

# Windows as large as the canvas, so each region is one window (as the reference does).
[tiles]
size = [384, 256]

[[region]]
rect = [0, 0, 256, 256]
prompt = "a red castle on a hill, oil painting"
guidance = 7.5
mask = "quartic"

[[region]]
rect = [128, 0, 256, 256]
prompt = "a blue lake with snowy mountains"
guidance = 5.0
mask = "constant"
weight = 0.8

[[region]]
rect = [64, 128, 320, 128]
prompt = "a field of sunflowers"
guidance = 6.0
mask = "quartic"
weight = 1.3
"#;
    let (_, plan, dir) = plan_of(spec);
    assert_eq!(plan.windows.len(), 3);
    let windows = realize_windows(&plan.windows).unwrap();
    for (k, w) in windows.iter().enumerate() {
        let reference = get(&f, &format!("t2i.{k}.weights"));
        assert_eq!(
            w.weights.dtype(),
            reference.dtype(),
            "region {k} weight dtype"
        );
        let diff = max_abs_diff(&w.weights, &reference);
        assert!(diff <= 1e-12, "region {k} weights differ by {diff:e}");
        let coords: Vec<i64> = get(&f, &format!("t2i.{k}.latent_coords"))
            .to_vec1()
            .unwrap();
        let r = w.rect;
        let want = [r.y, r.y + r.h, r.x, r.x + r.w];
        assert_eq!(coords, want.iter().map(|&v| v as i64).collect::<Vec<_>>());
    }
    let conds = encode_prompts(&dir, &runtime(), &plan.prompts).unwrap();
    run_and_check("f4", 3, &f, &conds, &windows, |_, _, _, x| Ok(x));
}

#[test]
fn f2_tiling_grid_and_weights_match_mixture_tiling() {
    let f = fixture("f2_tiling");
    // The planner puts the reference's tiles where the reference does.
    let grid = geometry::grid(28, 28, (16, 16), 4);
    let mut conds = Vec::new();
    let mut windows = Vec::new();
    // Upstream tiling quirk: the y midpoint is h/2 (canvas semantics use (h-1)/2 on both axes).
    let quirk = geometry::outer(
        &geometry::gaussian_1d(16, 8.0),
        &geometry::gaussian_1d(16, 7.5),
        1.0,
    );
    let quirk = Tensor::from_vec(quirk, (16, 16), &candle_core::Device::Cpu).unwrap();
    assert!(max_abs_diff(&quirk, &get(&f, "tile_weights_f64")) <= 1e-12);
    for (k, rect) in grid.iter().enumerate() {
        let (row, col) = (k / 2, k % 2);
        let coords: Vec<i64> = get(&f, &format!("tile.{row}.{col}.latent_coords"))
            .to_vec1()
            .unwrap();
        assert_eq!(
            coords,
            vec![
                rect.y as i64,
                (rect.y + 16) as i64,
                rect.x as i64,
                (rect.x + 16) as i64
            ]
        );
        conds.push(Cond {
            context: get(&f, &format!("tile.{row}.{col}.prompt_embeds")),
            pooled: None,
            guidance: 7.5,
        });
        windows.push(Window {
            rect: *rect,
            cond: k,
            weights: quirk.clone(),
        });
    }
    run_and_check("f2", 4, &f, &conds, &windows, |_, _, _, x| Ok(x));
}

#[test]
fn f3_image_region_matches_mixture_canvas_img2img() {
    let f = fixture("f3_canvas_img2img");
    let dir = ModelDir::open(tiny_model_dir()).unwrap();
    let spec = r#"
[canvas]
width = 384
height = 256
seed = 11
steps = 10
scheduler = "ddim"
[tiles]
size = [384, 256]
[[region]]
rect = [0, 0, 384, 256]
prompt = "a wide landscape at sunset"
guidance = 7.5
"#;
    let (_, plan, _) = plan_of(spec);
    let windows = realize_windows(&plan.windows).unwrap();
    let conds = encode_prompts(&dir, &runtime(), &plan.prompts).unwrap();
    assert_close(
        "f3 embeddings",
        &conds[0].context,
        &get(&f, "t2i.0.prompt_embeds"),
        1e-4,
    );
    // The reference samples its latent distribution with stored noise (tessera's CLI uses the mean).
    let vae = dir.load_vae(&runtime(), DType::F32).unwrap();
    let dist = vae.encode(&get(&f, "i2i.0.image")).unwrap();
    let sampled =
        (&dist.mean + (dist.std().unwrap() * get(&f, "i2i.0.sample_noise")).unwrap()).unwrap();
    let reference = (sampled * 0.18215).unwrap();
    assert_close(
        "f3 reference latents",
        &reference,
        &get(&f, "i2i.0.ref_latents"),
        1e-4,
    );
    let sched =
        scheduler::build(SchedulerKind::Ddim, &dir.scheduler_config().unwrap(), 10).unwrap();
    let latest = pass::latest_timestep(sched.as_ref(), &dir.scheduler_config().unwrap(), 10, 0.5);
    assert_eq!(
        latest,
        get(&f, "i2i.0.latest_timestep").to_scalar::<i64>().unwrap() as f64
    );
    let rect = Rect {
        y: 8,
        x: 16,
        h: 16,
        w: 16,
    };
    let coords: Vec<i64> = get(&f, "i2i.0.latent_coords").to_vec1().unwrap();
    assert_eq!(coords, vec![8, 24, 16, 32]);
    let regions = vec![(rect, reference, latest)];
    let init = get(&f, "init_noise");
    run_and_check("f3", 2, &f, &conds, &windows, |_, t, s, x| {
        pass::apply_image_regions(s, &regions, &init, t, x)
    });
}

#[test]
fn one_window_canvas_equals_plain_txt2img_exactly() {
    // A canvas whose single window covers it takes the txt2img path, bit for bit.
    let (_, plan, dir) = plan_of("[canvas]\nwidth = 128\nheight = 128\nsteps = 3\nscheduler = \"ddim\"\n[prompt]\ntext = \"a cat\"\n");
    assert_eq!(plan.windows.len(), 1);
    let conds = encode_prompts(&dir, &runtime(), &plan.prompts).unwrap();
    let unet = dir.load_unet(&runtime(), DType::F32).unwrap();
    let cfg = dir.scheduler_config().unwrap();
    let x = SeededNoise::new(1).noise(&(1, 4, 16, 16).into()).unwrap();
    let x = x.to_device(&runtime().device).unwrap();
    let windows = realize_windows(&plan.windows).unwrap();
    let job = Pass {
        group: 1,
        predictor: &unet,
        windows: &windows,
        conds: &conds,
        canvas_px: (128, 128),
        observer: &Quiet,
    };
    let mut s1 = scheduler::build(SchedulerKind::Ddim, &cfg, 3).unwrap();
    let a = job
        .run(
            s1.as_mut(),
            x.clone(),
            0,
            &mut SeededNoise::new(0),
            |_, _, _, x| Ok(x),
        )
        .unwrap();
    // Plain txt2img by hand: guided eps and a scheduler step, nothing else.
    let mut s2 = scheduler::build(SchedulerKind::Ddim, &cfg, 3).unwrap();
    let mut y = x;
    for t in s2.timesteps().to_vec() {
        let at = Placement::whole((128, 128));
        let eps = guided_eps(&unet, s2.as_ref(), &y, t, &conds[0], &at).unwrap();
        y = s2.step(&eps, t, &y, &mut SeededNoise::new(0)).unwrap();
    }
    assert_eq!(max_abs_diff(&a, &y), 0.0);
}
