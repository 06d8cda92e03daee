//! Each scheduler alone against diffusers (fixtures sched_*), step by step, in f32.

mod common;
use candle_core::IndexOp;
use common::*;
use tessera::models::ModelDir;
use tessera::noise::{ReplayNoise, SeededNoise};
use tessera::scheduler::{self, schedule, SchedulerConfig, SchedulerKind};

fn check(name: &str, kind: SchedulerKind) {
    let f = fixture(name);
    let cfg: SchedulerConfig =
        serde_json::from_str(&fixture_metadata(name)["scheduler_config"]).unwrap();
    let mut s = scheduler::build(kind, &cfg, 10).unwrap();
    let ref_t: Vec<f64> = get(&f, "timesteps")
        .to_dtype(candle_core::DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(s.timesteps(), &ref_t[..], "{name}: timesteps");
    let sigma: f32 = get(&f, "init_noise_sigma").to_scalar().unwrap();
    assert!(
        (s.init_noise_sigma() as f32 - sigma).abs() <= 1e-6 * sigma,
        "{name}: init_noise_sigma"
    );
    let mut noise: Box<dyn tessera::noise::NoiseSource> = match f.get("step_noises") {
        Some(n) => Box::new(ReplayNoise::new((0..10).map(|i| n.i(i).unwrap()))),
        None => Box::new(SeededNoise::new(0)),
    };
    let mut x = get(&f, "sample_0");
    let (outs, scaled, prevs) = (
        get(&f, "model_outputs"),
        get(&f, "scaled_inputs"),
        get(&f, "prev_samples"),
    );
    let mut worst: f64 = 0.0;
    for (i, &t) in ref_t.iter().enumerate() {
        let input = s.scale_model_input(&x, t).unwrap();
        let rel_in =
            max_abs_diff(&input, &scaled.i(i).unwrap()) / max_abs(&scaled.i(i).unwrap()).max(1.0);
        x = s.step(&outs.i(i).unwrap(), t, &x, noise.as_mut()).unwrap();
        let reference = prevs.i(i).unwrap();
        let rel = max_abs_diff(&x, &reference) / max_abs(&reference).max(1.0);
        assert!(
            rel_in <= 1e-5 && rel <= 1e-5,
            "{name}: first divergence at step {i} (t={t}): input {rel_in:e}, sample {rel:e}"
        );
        worst = worst.max(rel).max(rel_in);
    }
    eprintln!("{name}: worst step rel diff {worst:.2e}");
}

#[test]
fn ddim_matches_diffusers() {
    check("sched_ddim", SchedulerKind::Ddim);
}

#[test]
fn euler_leading_matches_diffusers() {
    check("sched_euler", SchedulerKind::Euler);
}

#[test]
fn euler_linspace_matches_diffusers() {
    check("sched_euler_linspace", SchedulerKind::Euler);
}

#[test]
fn euler_ancestral_replays_stored_noise() {
    check("sched_euler_a", SchedulerKind::EulerAncestral);
}

#[test]
fn dpm_solver_2m_matches_diffusers() {
    check("sched_dpmpp", SchedulerKind::DpmPlusPlus2M);
}

#[test]
fn alphas_cumprod_and_folder_config_match() {
    let f = fixture("sched_ddim");
    let cfg = ModelDir::open(tiny_model_dir())
        .unwrap()
        .scheduler_config()
        .unwrap();
    let ours = schedule::alphas_cumprod(&cfg);
    let reference: Vec<f32> = get(&f, "alphas_cumprod").to_vec1().unwrap();
    let worst = ours
        .iter()
        .zip(&reference)
        .map(|(a, b)| ((a - b) / b).abs())
        .fold(0f32, f32::max);
    assert!(worst <= 1e-6, "alphas_cumprod rel diff {worst:e}");
    // A scheduler chosen by name inherits leading spacing + offset from the folder's DDIM config.
    let s = scheduler::build(SchedulerKind::DpmPlusPlus2M, &cfg, 10).unwrap();
    assert_eq!(
        s.timesteps(),
        &[901.0, 811.0, 721.0, 631.0, 541.0, 451.0, 361.0, 271.0, 181.0, 91.0]
    );
}

#[test]
fn trailing_spacing_and_v_prediction() {
    let cfg = SchedulerConfig {
        timestep_spacing: scheduler::TimestepSpacing::Trailing,
        ..Default::default()
    };
    let s = scheduler::build(SchedulerKind::Ddim, &cfg, 10).unwrap();
    assert_eq!(
        s.timesteps(),
        &[999.0, 899.0, 799.0, 699.0, 599.0, 499.0, 399.0, 299.0, 199.0, 99.0]
    );
    // v-prediction DDIM: with v = sqrt(ᾱ) eps - sqrt(1-ᾱ) x0, a step must land where the
    // epsilon formulation lands for the same (x0, eps).
    let v_cfg = SchedulerConfig {
        prediction_type: scheduler::PredictionType::VPrediction,
        ..Default::default()
    };
    let e_cfg = SchedulerConfig::default();
    let mut sv = scheduler::build(SchedulerKind::Ddim, &v_cfg, 10).unwrap();
    let mut se = scheduler::build(SchedulerKind::Ddim, &e_cfg, 10).unwrap();
    let t = sv.timesteps()[3];
    let a = schedule::alphas_cumprod(&e_cfg)[t as usize] as f64;
    let dev = candle_core::Device::Cpu;
    let x0 = candle_core::Tensor::new(&[[0.5f32, -1.0], [2.0, 0.25]], &dev).unwrap();
    let eps = candle_core::Tensor::new(&[[1.0f32, 0.3], [-0.7, 0.1]], &dev).unwrap();
    let xt = ((&x0 * a.sqrt()).unwrap() + (&eps * (1.0 - a).sqrt()).unwrap()).unwrap();
    let v = ((&eps * a.sqrt()).unwrap() - (&x0 * (1.0 - a).sqrt()).unwrap()).unwrap();
    let mut n = SeededNoise::new(0);
    let by_v = sv.step(&v, t, &xt, &mut n).unwrap();
    let by_eps = se.step(&eps, t, &xt, &mut n).unwrap();
    assert!(
        max_abs_diff(&by_v, &by_eps) < 1e-5,
        "v-prediction step differs by {}",
        max_abs_diff(&by_v, &by_eps)
    );
}
