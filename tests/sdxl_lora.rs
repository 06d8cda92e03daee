//! SDXL LoRAs on the tiny SDXL model (fixtures in tests/fixtures/lora-sdxl, made and checked
//! against diffusers' `load_lora_weights` by tools/make_sdxl_lora.py): kohya names (UNet in the
//! LDM layout, `lora_te1_`/`lora_te2_`) and PEFT names (`unet.`, `text_encoder.`,
//! `text_encoder_2.`, alpha in the metadata) merge into the same weights, and the UNet and both
//! text encoders match diffusers at scales 1.0 and 0.6.

use crate::common;
use candle_core::{DType, Tensor};
use common::*;
use std::collections::HashMap;
use std::path::PathBuf;
use tessera::models::text::TextEncoders;
use tessera::models::ModelDir;
use tessera::nn::unet::AddedCond;

const KOHYA: &str = "tiny_sdxl_lora_kohya.safetensors";
const PEFT: &str = "tiny_sdxl_lora_peft.safetensors";

fn lora_path(name: &str) -> PathBuf {
    repo_path(&format!("tests/fixtures/lora-sdxl/{name}"))
}

fn reference() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(lora_path("lora_sdxl.safetensors"), &runtime().device).unwrap()
}

fn with_lora(file: &str, weight: f64) -> ModelDir {
    ModelDir::open(tiny_sdxl_dir())
        .unwrap()
        .with_loras(&[(lora_path(file), weight)])
        .unwrap()
}

#[test]
fn sdxl_lora_formats_merge_into_the_same_weights() {
    let peft = candle_core::safetensors::load(lora_path(PEFT), &candle_core::Device::Cpu).unwrap();
    let targets: Vec<(&str, String)> = peft
        .keys()
        .filter_map(|k| k.strip_suffix(".lora_A.weight"))
        .map(|m| {
            let (component, module) = m.split_once('.').unwrap();
            (component, format!("{module}.weight"))
        })
        .collect();
    assert_eq!(targets.len(), 104);
    let rt = runtime();
    let base = ModelDir::open(tiny_sdxl_dir()).unwrap();
    let (kohya, peft) = (with_lora(KOHYA, 1.0), with_lora(PEFT, 1.0));
    let mut per_component: HashMap<&str, usize> = HashMap::new();
    for (component, name) in &targets {
        let stem = match *component {
            "unet" => "diffusion_pytorch_model",
            _ => "model",
        };
        let get = |d: &ModelDir| {
            d.var_builder(&rt, component, stem, DType::F32)
                .unwrap()
                .get_unchecked(name)
                .unwrap()
        };
        let (w, k, p) = (get(&base), get(&kohya), get(&peft));
        assert_eq!(
            max_abs_diff(&k, &p),
            0.0,
            "{component} {name}: kohya != peft"
        );
        assert!(
            max_abs_diff(&k, &w) > 1e-3,
            "{component} {name}: LoRA changed nothing"
        );
        *per_component.entry(component).or_default() += 1;
    }
    assert_eq!(per_component["unet"], 88);
    assert_eq!(per_component["text_encoder"], 8);
    assert_eq!(per_component["text_encoder_2"], 8);
    // An SDXL LoRA on an SD 1.x model is refused, naming the file.
    let e = ModelDir::open(tiny_model_dir())
        .unwrap()
        .with_loras(&[(lora_path(KOHYA), 1.0)])
        .unwrap_err()
        .to_string();
    assert!(e.contains(KOHYA), "{e}");
}

#[test]
fn sdxl_lora_unet_matches_diffusers_at_each_scale() {
    let f = reference();
    let (sample, ehs) = (get(&f, "sample"), get(&f, "encoder_hidden_states"));
    let (text_embeds, time_ids) = (get(&f, "text_embeds"), get(&f, "time_ids"));
    let added = Some(AddedCond {
        text_embeds: &text_embeds,
        time_ids: &time_ids,
    });
    let rt = runtime();
    let base = ModelDir::open(tiny_sdxl_dir()).unwrap();
    let out = base
        .load_unet(&rt, DType::F32)
        .unwrap()
        .forward_added(&sample, 500.0, &ehs, added)
        .unwrap();
    assert_close("sdxl unet, no LoRA", &out, &get(&f, "base.unet"), 1e-4);
    for scale in [1.0, 0.6] {
        let reference = get(&f, &format!("lora_s{scale:.1}.unet"));
        for file in [KOHYA, PEFT] {
            let out = with_lora(file, scale)
                .load_unet(&rt, DType::F32)
                .unwrap()
                .forward_added(&sample, 500.0, &ehs, added)
                .unwrap();
            assert_close(
                &format!("sdxl unet {file} s={scale}"),
                &out,
                &reference,
                1e-4,
            );
        }
    }
    // Through a single-file checkpoint the LoRA finds the same modules.
    let single = repo_path("tests/fixtures/single-sdxl/tiny-sdxl.safetensors");
    let single = ModelDir::open_model(single, Some(&tiny_sdxl_dir()))
        .unwrap()
        .with_loras(&[(lora_path(KOHYA), 1.0)])
        .unwrap();
    let out = single
        .load_unet(&rt, DType::F32)
        .unwrap()
        .forward_added(&sample, 500.0, &ehs, added)
        .unwrap();
    assert_close(
        "sdxl single file + LoRA",
        &out,
        &get(&f, "lora_s1.0.unet"),
        1e-4,
    );
}

#[test]
fn sdxl_lora_text_encoders_match_diffusers_at_each_scale() {
    let f = reference();
    let rt = runtime();
    let prompts = ["a photo of a cat", "a red sailing boat on a calm lake"];
    for scale in [1.0, 0.6] {
        for file in [KOHYA, PEFT] {
            let e = TextEncoders::load(&with_lora(file, scale), &rt)
                .unwrap()
                .encode(&prompts)
                .unwrap();
            assert_close(
                &format!("sdxl prompt_embeds {file} s={scale}"),
                &e.context,
                &get(&f, &format!("lora_s{scale:.1}.prompt_embeds")),
                1e-4,
            );
            assert_close(
                &format!("sdxl pooled {file} s={scale}"),
                e.pooled.as_ref().unwrap(),
                &get(&f, &format!("lora_s{scale:.1}.pooled_prompt_embeds")),
                1e-4,
            );
        }
    }
}
