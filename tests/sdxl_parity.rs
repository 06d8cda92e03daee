//! SDXL parity with diffusers' StableDiffusionXLPipeline on the tiny SDXL-shaped model
//! (fixtures `tests/fixtures/reference-sdxl`): tokenizers, both text encoders, the UNet with
//! its added conditioning, and the Euler txt2img step by step, in f32.

use crate::common;
use candle_core::{DType, IndexOp, Tensor};
use common::*;
use std::collections::HashMap;
use tessera::autoencoder::Autoencoder;
use tessera::geometry::Rect;
use tessera::mixture::Window;
use tessera::models::text::TextEncoders;
use tessera::models::ModelDir;
use tessera::nn::unet::AddedCond;
use tessera::noise::SeededNoise;
use tessera::pass::Pass;
use tessera::scheduler::{self, SchedulerConfig, SchedulerKind};
use tessera::{Cond, Placement, Quiet};

const SET: &str = "reference-sdxl";

fn meta(name: &str) -> HashMap<String, String> {
    let path = repo_path(&format!("tests/fixtures/{SET}/{name}.safetensors"));
    let bytes = std::fs::read(&path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    meta.metadata().clone().unwrap_or_default()
}

fn prompts() -> Vec<String> {
    serde_json::from_str(&meta("a_text_embeddings")["prompts"]).unwrap()
}

fn dir() -> ModelDir {
    ModelDir::open(tiny_sdxl_dir()).unwrap()
}

#[test]
fn both_tokenizers_match_transformers() {
    let f = fixture_in(SET, "a_text_embeddings");
    let d = dir();
    for (tok, key) in [
        (d.tokenizer().unwrap(), "input_ids_1"),
        (d.tokenizer_2().unwrap(), "input_ids_2"),
    ] {
        let ids: Vec<Vec<i64>> = get(&f, key).to_vec2().unwrap();
        for (i, p) in prompts().iter().enumerate() {
            let got: Vec<i64> = tok.encode(p).unwrap().into_iter().map(i64::from).collect();
            assert_eq!(got, ids[i], "{key} of prompt {i} {p:?}");
        }
    }
}

#[test]
fn vocab_and_merges_tokenizer_pads_and_splits_on_bang() {
    // Real SDXL folders ship tokenizer_2 without tokenizer.json.
    let tmp = tempfile::tempdir().unwrap();
    let src = tiny_sdxl_dir().join("tokenizer_2");
    for f in ["vocab.json", "merges.txt", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), tmp.path().join(f)).unwrap();
    }
    let tok = tessera::nn::tokenizer::ClipTokenizer::from_dir(tmp.path()).unwrap();
    let f = fixture_in(SET, "a_text_embeddings");
    let ids: Vec<Vec<i64>> = get(&f, "input_ids_2").to_vec2().unwrap();
    for (i, p) in prompts().iter().enumerate() {
        let got: Vec<i64> = tok.encode(p).unwrap().into_iter().map(i64::from).collect();
        assert_eq!(got, ids[i], "vocab+merges input_ids_2 of prompt {i} {p:?}");
    }
}

#[test]
fn prompt_and_pooled_embeddings_match_diffusers() {
    let f = fixture_in(SET, "a_text_embeddings");
    let encoders = TextEncoders::load(&dir(), &runtime()).unwrap();
    let texts = prompts();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let e = encoders.encode(&texts).unwrap();
    assert_close(
        "sdxl prompt_embeds",
        &e.context,
        &get(&f, "prompt_embeds"),
        1e-4,
    );
    assert_close(
        "sdxl pooled_prompt_embeds",
        e.pooled.as_ref().unwrap(),
        &get(&f, "pooled_prompt_embeds"),
        1e-4,
    );
    // force_zeros_for_empty_prompt: an empty negative is zeros, the prompt is untouched.
    let pair = encoders.encode_pair("", texts[0]).unwrap();
    assert_eq!(max_abs(&pair.context.i(0).unwrap()), 0.0);
    assert_eq!(max_abs(&pair.pooled.as_ref().unwrap().i(0).unwrap()), 0.0);
    assert_close(
        "sdxl pair cond half",
        &pair.context.i(1..2).unwrap(),
        &get(&f, "prompt_embeds").i(0..1).unwrap(),
        1e-4,
    );
}

#[test]
fn unet_with_added_conditioning_matches_diffusers() {
    let f = fixture_in(SET, "b_unet");
    let unet = dir().load_unet(&runtime(), DType::F32).unwrap();
    let ids: Vec<Vec<f32>> = get(&f, "time_ids").to_vec2().unwrap();
    assert_eq!(ids[0], Placement::whole((128, 128)).time_ids().to_vec());
    let (text_embeds, time_ids) = (get(&f, "text_embeds"), get(&f, "time_ids"));
    let added = AddedCond {
        text_embeds: &text_embeds,
        time_ids: &time_ids,
    };
    let (sample, ehs) = (get(&f, "sample"), get(&f, "encoder_hidden_states"));
    for t in [999, 500] {
        let out = unet
            .forward_added(&sample, t as f64, &ehs, Some(added))
            .unwrap();
        let reference = get(&f, &format!("t{t}.out"));
        assert_close(&format!("sdxl unet t={t}"), &out, &reference, 1e-4);
    }
    // Without its added conditioning an SDXL UNet refuses to run rather than guess.
    assert!(unet.forward(&sample, 500.0, &ehs).is_err());
}

#[test]
fn txt2img_euler_matches_diffusers_step_by_step() {
    let f = fixture_in(SET, "c_txt2img_euler");
    let config: SchedulerConfig =
        serde_json::from_str(&meta("c_txt2img_euler")["scheduler_config"]).unwrap();
    let d = dir();
    // Prompt encoding through both tokenizers and encoders (negative "" encoded, as the
    // reference call passes negative_prompt="").
    let encoders = TextEncoders::load(&d, &runtime()).unwrap();
    let e = encoders.encode(&["", "a photo of a cat"]).unwrap();
    assert_close(
        "c prompt_embeds",
        &e.context,
        &get(&f, "prompt_embeds"),
        1e-4,
    );
    assert_close(
        "c pooled",
        e.pooled.as_ref().unwrap(),
        &get(&f, "pooled_prompt_embeds"),
        1e-4,
    );
    // The loop runs on the reference embeddings so each stage is judged on its own.
    let conds = vec![Cond {
        context: get(&f, "prompt_embeds"),
        pooled: Some(get(&f, "pooled_prompt_embeds")),
        guidance: 5.0,
    }];
    let mut sched = scheduler::build(SchedulerKind::Euler, &config, 8).unwrap();
    let ref_t: Vec<f32> = get(&f, "timesteps").to_vec1().unwrap();
    let got_t: Vec<f32> = sched.timesteps().iter().map(|&t| t as f32).collect();
    assert_eq!(got_t, ref_t, "timesteps");
    let latents = (get(&f, "init_latents") * sched.init_noise_sigma()).unwrap();
    let unet = d.load_unet(&runtime(), DType::F32).unwrap();
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
    let step_latents = get(&f, "step_latents");
    let mut worst = 0f64;
    let out = job
        .run(
            sched.as_mut(),
            latents,
            0,
            &mut SeededNoise::new(0),
            |i, _, _, x| {
                let reference = step_latents.i(i).unwrap();
                let rel = max_abs_diff(&x, &reference) / max_abs(&reference).max(1.0);
                eprintln!("sdxl euler step {i}: rel diff {rel:.2e}");
                assert!(rel <= 1e-3, "step {i}: rel diff {rel:e}");
                worst = worst.max(rel);
                Ok(x)
            },
        )
        .unwrap();
    let final_ref = get(&f, "final_latents");
    let rel = max_abs_diff(&out, &final_ref) / max_abs(&final_ref);
    eprintln!("sdxl euler: final latents rel diff {rel:.2e} (worst step {worst:.2e})");
    assert!(rel <= 1e-3, "final latents rel diff {rel:e}");
    let decoded = Autoencoder::new(&d, &runtime(), None)
        .decode(&final_ref, &Quiet)
        .unwrap();
    assert_close("sdxl vae_decoded", &decoded, &get(&f, "vae_decoded"), 1e-4);
}

#[test]
fn synth_sdxl_has_the_real_architectures_parameter_counts() {
    // stable-diffusion-xl-base-1.0's weight files hold these counts (UNet 2.57 G, CLIP-L
    // 123 M, OpenCLIP bigG with projection 695 M, VAE 83.7 M).
    let counts: HashMap<&str, u64> = tessera::models::synth::parameter_counts("sdxl")
        .unwrap()
        .into_iter()
        .collect();
    eprintln!("sdxl parameter counts: {counts:?}");
    assert_eq!(counts["unet"], 2_567_463_684);
    assert_eq!(counts["text_encoder"], 123_060_480);
    assert_eq!(counts["text_encoder_2"], 694_659_840);
    assert_eq!(counts["vae"], 83_653_863);
}
