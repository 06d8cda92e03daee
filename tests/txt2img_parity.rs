//! Full txt2img parity with diffusers' StableDiffusionPipeline (fixtures e_txt2img_*), from the
//! prompt text to the decoded image, checking every step to localise any divergence.

use crate::common;
use candle_core::{DType, IndexOp, Tensor};
use common::*;
use tessera::autoencoder::Autoencoder;
use tessera::geometry::Rect;
use tessera::mixture::Window;
use tessera::models::ModelDir;
use tessera::noise::{NoiseSource, ReplayNoise, SeededNoise};
use tessera::pass::Pass;
use tessera::render::encode_prompts;
use tessera::scheduler::{self, SchedulerConfig, SchedulerKind};
use tessera::spec::TextPrompt;
use tessera::{Cond, Quiet};

fn run_case(name: &str, kind: SchedulerKind) {
    let f = fixture(name);
    let meta = fixture_metadata(name);
    let config: SchedulerConfig = serde_json::from_str(&meta["scheduler_config"]).unwrap();
    let dir = ModelDir::open(tiny_model_dir()).unwrap();

    // Prompt encoding through our tokenizer and text encoder.
    let prompt = TextPrompt {
        text: "a photo of a cat".into(),
        negative: String::new(),
        guidance: 7.5,
    };
    let conds = encode_prompts(&dir, &runtime(), &[prompt]).unwrap();
    assert_close(
        &format!("{name} prompt_embeds"),
        &conds[0].context,
        &get(&f, "prompt_embeds"),
        1e-4,
    );
    // The loop runs on the reference embeddings so each stage is judged on its own.
    let conds = vec![Cond {
        context: get(&f, "prompt_embeds"),
        pooled: None,
        guidance: 7.5,
    }];

    let mut sched = scheduler::build(kind, &config, 10).unwrap();
    let ref_t: Vec<f32> = get(&f, "timesteps").to_vec1().unwrap();
    let got_t: Vec<f32> = sched.timesteps().iter().map(|&t| t as f32).collect();
    assert_eq!(got_t, ref_t, "{name}: timesteps");

    let latents = (get(&f, "init_latents") * sched.init_noise_sigma()).unwrap();
    let unet = dir.load_unet(&runtime(), DType::F32).unwrap();
    let whole = Rect {
        y: 0,
        x: 0,
        h: 16,
        w: 16,
    };
    let windows = [Window {
        rect: whole,
        cond: 0,
        weights: Tensor::ones((16, 16), DType::F64, &candle_core::Device::Cpu).unwrap(),
    }];
    let job = Pass {
        group: 1,
        predictor: &unet,
        windows: &windows,
        conds: &conds,
        canvas_px: (128, 128),
        observer: &Quiet,
    };
    let mut noise: Box<dyn NoiseSource> = match f.get("step_noises") {
        Some(n) => Box::new(ReplayNoise::new((0..10).map(|i| n.i(i).unwrap()))),
        None => Box::new(SeededNoise::new(0)),
    };
    let step_latents = get(&f, "step_latents");
    let mut first_divergence = None;
    let out = job
        .run(sched.as_mut(), latents, 0, noise.as_mut(), |i, _, _, x| {
            let reference = step_latents.i(i).unwrap();
            let rel = max_abs_diff(&x, &reference) / max_abs(&reference).max(1.0);
            eprintln!("{name} step {i}: rel diff {rel:.2e}");
            if rel > 1e-3 && first_divergence.is_none() {
                first_divergence = Some((i, rel));
            }
            Ok(x)
        })
        .unwrap();
    assert!(
        first_divergence.is_none(),
        "{name}: first diverging step (index, rel diff): {first_divergence:?}"
    );
    let final_ref = get(&f, "final_latents");
    let rel = max_abs_diff(&out, &final_ref) / max_abs(&final_ref);
    eprintln!("{name}: final latents rel diff {rel:.2e}");
    assert!(rel <= 1e-3, "{name}: final latents rel diff {rel:e}");

    let decoded = Autoencoder::new(&dir, &runtime(), None)
        .decode(&final_ref, &Quiet)
        .unwrap();
    assert_close(
        &format!("{name} vae_decoded"),
        &decoded,
        &get(&f, "vae_decoded"),
        1e-4,
    );
}

#[test]
fn txt2img_ddim() {
    run_case("e_txt2img_ddim", SchedulerKind::Ddim);
}

#[test]
fn txt2img_euler() {
    run_case("e_txt2img_euler", SchedulerKind::Euler);
}

#[test]
fn txt2img_euler_linspace() {
    run_case("e_txt2img_euler_linspace", SchedulerKind::Euler);
}

#[test]
fn txt2img_euler_ancestral() {
    run_case("e_txt2img_euler_a", SchedulerKind::EulerAncestral);
}

#[test]
fn txt2img_dpmpp_2m() {
    run_case("e_txt2img_dpmpp", SchedulerKind::DpmPlusPlus2M);
}

#[test]
fn txt2img_dpmpp_2m_karras() {
    run_case("e_txt2img_dpmpp_karras", SchedulerKind::DpmPlusPlus2MKarras);
}
