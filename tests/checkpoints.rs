//! Weight loading beyond a plain diffusers folder: LoRA files merged at load time (fixtures in
//! tests/fixtures/lora, diffusers 0.42.1 + PEFT).

use crate::common;
use candle_core::{DType, Tensor};
use common::*;
use std::collections::HashMap;
use std::path::PathBuf;
use tessera::models::ModelDir;

fn lora_path(name: &str) -> PathBuf {
    repo_path(&format!("tests/fixtures/lora/{name}"))
}

fn lora_fixture(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(lora_path(name), &runtime().device).unwrap()
}

fn with_lora(file: &str, weight: f64) -> ModelDir {
    ModelDir::open(tiny_model_dir())
        .unwrap()
        .with_loras(&[(lora_path(file), weight)])
        .unwrap()
}

const KOHYA: &str = "tiny_lora_kohya.safetensors";
const PEFT: &str = "tiny_lora_diffusers.safetensors";

#[test]
fn lora_formats_merge_into_the_same_weights() {
    // The weights the LoRA touches, named from the diffusers file's keys.
    let keys: Vec<String> = lora_fixture(PEFT).into_keys().collect();
    let targets: Vec<(&str, String)> = keys
        .iter()
        .filter_map(|k| k.strip_suffix(".lora_A.weight"))
        .map(|m| match m.strip_prefix("unet.") {
            Some(p) => ("unet", format!("{p}.weight")),
            None => (
                "text_encoder",
                format!("{}.weight", &m["text_encoder.".len()..]),
            ),
        })
        .collect();
    assert_eq!(targets.len(), 88);
    let rt = runtime();
    let base = ModelDir::open(tiny_model_dir()).unwrap();
    let (kohya, peft) = (with_lora(KOHYA, 1.0), with_lora(PEFT, 1.0));
    let stem = |c: &str| {
        if c == "unet" {
            "diffusion_pytorch_model"
        } else {
            "model"
        }
    };
    for (component, name) in &targets {
        let get = |d: &ModelDir| {
            d.var_builder(&rt, component, stem(component), DType::F32)
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
    }
}

#[test]
fn lora_unet_matches_diffusers_at_each_scale() {
    let f = lora_fixture("lora_unet.safetensors");
    let (sample, ehs) = (get(&f, "sample"), get(&f, "encoder_hidden_states"));
    let base = ModelDir::open(tiny_model_dir()).unwrap();
    let out = base
        .load_unet(&runtime(), DType::F32)
        .unwrap()
        .forward(&sample, 500.0, &ehs);
    assert_close("unet no LoRA", &out.unwrap(), &get(&f, "base.out"), 1e-4);
    for (file, scale) in [(KOHYA, 1.0), (PEFT, 1.0), (KOHYA, 0.6), (PEFT, 0.6)] {
        let dir = with_lora(file, scale);
        let unet = dir.load_unet(&runtime(), DType::F32).unwrap();
        let out = unet.forward(&sample, 500.0, &ehs).unwrap();
        let reference = get(&f, &format!("lora_s{scale:.1}.out"));
        assert_close(&format!("unet {file} s={scale}"), &out, &reference, 1e-4);
        if scale == 0.6 {
            // Streamed layers get the same merge.
            let streamed = dir.load_unet_streaming(&runtime(), DType::F32).unwrap();
            let s = streamed.forward(&sample, 500.0, &ehs).unwrap();
            assert_eq!(max_abs_diff(&out, &s), 0.0, "{file}: streamed LoRA differs");
        }
    }
}

#[test]
fn lora_text_encoder_matches_diffusers_at_each_scale() {
    let f = lora_fixture("lora_text.safetensors");
    let ids: Vec<Vec<i64>> = get(&f, "input_ids").to_vec2().unwrap();
    let ids: Vec<Vec<u32>> = ids
        .into_iter()
        .map(|r| r.into_iter().map(|v| v as u32).collect())
        .collect();
    let ids = Tensor::new(ids, &runtime().device).unwrap();
    for (file, scale) in [(KOHYA, 1.0), (PEFT, 0.8)] {
        let encoder = with_lora(file, scale)
            .load_text_encoder(&runtime(), DType::F32)
            .unwrap();
        let out = encoder.forward(&ids).unwrap();
        let reference = get(&f, &format!("lora_s{scale:.1}.last_hidden_state"));
        assert_close(
            &format!("text encoder {file} s={scale}"),
            &out,
            &reference,
            1e-4,
        );
    }
}

#[test]
fn lora_errors_name_the_file_and_key() {
    let dir = ModelDir::open(tiny_model_dir()).unwrap();
    // A model file is not a LoRA: its first unknown key is named.
    let unet = tiny_model_dir().join("unet/diffusion_pytorch_model.safetensors");
    let e = dir.clone().with_loras(&[(unet.clone(), 1.0)]).unwrap_err();
    let e = e.to_string();
    assert!(
        e.contains("not a LoRA tensor") && e.contains("diffusion_pytorch_model"),
        "{e}"
    );
    let e = dir
        .with_loras(&[(lora_path("missing.safetensors"), 1.0)])
        .unwrap_err();
    assert!(e.to_string().contains("missing.safetensors"), "{e}");
}

fn single_file() -> PathBuf {
    repo_path("tests/fixtures/single/tiny-sd.safetensors")
}

#[test]
fn single_file_tensors_equal_the_folders_bit_for_bit() {
    let folder = ModelDir::open(tiny_model_dir()).unwrap();
    let single = ModelDir::open_model(single_file(), Some(&tiny_model_dir())).unwrap();
    let read = tensors_read_equal(&folder, &single, &["unet", "vae", "text_encoder"]);
    // Every tensor of the checkpoint is some folder tensor (440 UNet, 180 VAE, 36 CLIP).
    assert_eq!(read, 656);
}

#[test]
fn single_file_renders_what_the_folder_renders() {
    let tmp = tempfile::tempdir().unwrap();
    let (single, config) = (single_file(), tiny_model_dir());
    let mut latents = Vec::new();
    for (name, model) in [("folder", &config), ("single", &single)] {
        let out = tmp.path().join(format!("{name}.safetensors"));
        let png = tmp.path().join(format!("{name}.png"));
        let mut args = vec![
            "render",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "a cat",
            "--width",
            "64",
            "--height",
            "64",
            "--steps",
            "3",
            "--scheduler",
            "dpm++2m-karras",
            "--save-latents",
            out.to_str().unwrap(),
            "--out",
            png.to_str().unwrap(),
        ];
        if name == "single" {
            args.extend(["--config", config.to_str().unwrap()]);
        }
        let o = std::process::Command::new(tessera_bin())
            .args(&args)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        latents.push(
            candle_core::safetensors::load(&out, &candle_core::Device::Cpu).unwrap()["latents"]
                .clone(),
        );
        let text = String::from_utf8_lossy(&std::fs::read(&png).unwrap()).into_owned();
        assert!(
            text.contains("Sampler: DPM++ 2M Karras"),
            "{name}: A1111 sampler name"
        );
    }
    assert_eq!(max_abs_diff(&latents[0], &latents[1]), 0.0);
    // Without --config the file's architecture is unknown: exit 2, naming the file and the fix.
    let o = std::process::Command::new(tessera_bin())
        .args(["model", "info", single.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("tiny-sd.safetensors") && err.contains("--config"),
        "{err}"
    );
    let o = std::process::Command::new(tessera_bin())
        .args(["model", "info", single.to_str().unwrap(), "--json"])
        .args(["--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let info: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(info["unet"]["file"]
        .as_str()
        .unwrap()
        .ends_with("tiny-sd.safetensors"));
}

/// The tiny checkpoint with its text encoder rewritten in SD 2.x's OpenCLIP layout
/// (`cond_stage_model.model.*`, q/k/v concatenated into `in_proj`), converted here from the
/// folder's tensors by OpenCLIP's naming.
fn open_clip_checkpoint(dir: &std::path::Path) -> PathBuf {
    let cpu = candle_core::Device::Cpu;
    let mut all = candle_core::safetensors::load(single_file(), &cpu).unwrap();
    all.retain(|k, _| !k.starts_with("cond_stage_model."));
    let te = candle_core::safetensors::load(
        tiny_model_dir().join("text_encoder/model.safetensors"),
        &cpu,
    )
    .unwrap();
    let p = "cond_stage_model.model.";
    let t = |k: &str| te[&format!("text_model.{k}")].clone();
    all.insert(
        format!("{p}token_embedding.weight"),
        t("embeddings.token_embedding.weight"),
    );
    all.insert(
        format!("{p}positional_embedding"),
        t("embeddings.position_embedding.weight"),
    );
    for w in ["weight", "bias"] {
        all.insert(
            format!("{p}ln_final.{w}"),
            t(&format!("final_layer_norm.{w}")),
        );
    }
    for i in 0..2 {
        let (l, b) = (
            format!("encoder.layers.{i}"),
            format!("{p}transformer.resblocks.{i}"),
        );
        for w in ["weight", "bias"] {
            let qkv: Vec<Tensor> = ["q", "k", "v"]
                .iter()
                .map(|x| t(&format!("{l}.self_attn.{x}_proj.{w}")))
                .collect();
            all.insert(
                format!("{b}.attn.in_proj_{w}"),
                Tensor::cat(&qkv, 0).unwrap(),
            );
            for (d, o) in [
                ("self_attn.out_proj", "attn.out_proj"),
                ("layer_norm1", "ln_1"),
                ("layer_norm2", "ln_2"),
                ("mlp.fc1", "mlp.c_fc"),
                ("mlp.fc2", "mlp.c_proj"),
            ] {
                all.insert(format!("{b}.{o}.{w}"), t(&format!("{l}.{d}.{w}")));
            }
        }
    }
    let path = dir.join("tiny-sd2-layout.safetensors");
    candle_core::safetensors::save(&all, &path).unwrap();
    path
}

#[test]
fn open_clip_text_encoder_slices_in_proj_into_q_k_v() {
    let tmp = tempfile::tempdir().unwrap();
    let file = open_clip_checkpoint(tmp.path());
    let rt = runtime();
    let folder = ModelDir::open(tiny_model_dir()).unwrap();
    let single = ModelDir::open_model(&file, Some(&tiny_model_dir())).unwrap();
    let (_, entries) = folder.weight_entries("text_encoder", "model").unwrap();
    let a = folder
        .var_builder(&rt, "text_encoder", "model", DType::F32)
        .unwrap();
    let b = single
        .var_builder(&rt, "text_encoder", "model", DType::F32)
        .unwrap();
    for (name, _, _) in &entries {
        let want = a.get_unchecked(name).unwrap();
        let got = b
            .get(want.shape(), name)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(max_abs_diff(&got, &want), 0.0, "{name}");
    }
    assert_eq!(entries.len(), 36);
}

#[test]
fn architecture_is_read_from_the_shapes() {
    let file = tessera::nn::weights::WeightFile::open(&single_file()).unwrap();
    let arch = tessera::models::infer::architecture(&file).unwrap();
    let config = |part: &str| -> serde_json::Value {
        let path = tiny_model_dir().join(part).join("config.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    };
    let (unet, vae, text) = (config("unet"), config("vae"), config("text_encoder"));
    for field in [
        "in_channels",
        "out_channels",
        "block_out_channels",
        "down_block_types",
        "up_block_types",
        "layers_per_block",
        "cross_attention_dim",
        "use_linear_projection",
    ] {
        let want = unet.get(field).cloned().unwrap_or(serde_json::json!(false));
        assert_eq!(arch.unet[field], want, "unet {field}");
    }
    for field in [
        "in_channels",
        "out_channels",
        "latent_channels",
        "block_out_channels",
        "layers_per_block",
    ] {
        assert_eq!(arch.vae[field], vae[field], "vae {field}");
    }
    for field in [
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "max_position_embeddings",
    ] {
        assert_eq!(arch.text[field], text[field], "text encoder {field}");
    }
    assert!(!arch.sd2);
    // Its sizes are no family's, so the heads cannot be borrowed: --config is required.
    let e = tessera::models::infer::infer(&file)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tiny-sd.safetensors") && e.contains("--config"),
        "{e}"
    );
    let tmp = tempfile::tempdir().unwrap();
    let sd2 = tessera::nn::weights::WeightFile::open(&open_clip_checkpoint(tmp.path())).unwrap();
    let arch = tessera::models::infer::architecture(&sd2).unwrap();
    assert!(arch.sd2);
    assert_eq!(arch.text["hidden_size"], text["hidden_size"]);
}
