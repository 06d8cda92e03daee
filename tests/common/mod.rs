//! Shared helpers for parity tests against the diffusers reference fixtures.
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::PathBuf;

/// A path in the repository; `TESSERA_REPO` overrides the build's checkout (test binaries
/// carried to a GPU machine run in another folder).
pub fn repo_path(rel: &str) -> PathBuf {
    std::env::var_os("TESSERA_REPO")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join(rel)
}

/// The bundled tiny SD-1.5-shaped model the fixtures were computed with.
pub fn tiny_model_dir() -> PathBuf {
    repo_path("models/tiny-sd")
}

/// The `tessera` binary under test; `TESSERA_BIN` overrides the build's (test binaries carried
/// to a GPU machine run with a binary unpacked there).
pub fn tessera_bin() -> PathBuf {
    std::env::var_os("TESSERA_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_tessera")))
}

/// The runtime the parity tests run on: the CPU, or the device `TESSERA_TEST_DEVICE` names
/// (`cuda`, `cuda:1`, `metal`) in a GPU build, so the same tests check a GPU against diffusers.
pub fn runtime() -> tessera::nn::Runtime {
    let name = std::env::var("TESSERA_TEST_DEVICE").unwrap_or_else(|_| "cpu".into());
    let choice = tessera::choices::DeviceChoice::from_name(&name)
        .unwrap_or_else(|| panic!("TESSERA_TEST_DEVICE={name}: not a device name"));
    tessera::nn::Runtime::open(choice, Default::default())
        .unwrap_or_else(|e| panic!("TESSERA_TEST_DEVICE={name}: {}", e.message))
}

/// The bundled tiny SDXL-shaped model the `reference-sdxl` fixtures were computed with.
pub fn tiny_sdxl_dir() -> PathBuf {
    repo_path("models/tiny-sdxl")
}

/// Every tensor of `tests/fixtures/reference/<name>.safetensors`, on the test runtime's device.
pub fn fixture(name: &str) -> HashMap<String, Tensor> {
    fixture_in("reference", name)
}

/// Every tensor of `tests/fixtures/<set>/<name>.safetensors`, on the test runtime's device.
pub fn fixture_in(set: &str, name: &str) -> HashMap<String, Tensor> {
    let path = repo_path(&format!("tests/fixtures/{set}/{name}.safetensors"));
    candle_core::safetensors::load(&path, &runtime().device)
        .unwrap_or_else(|e| panic!("cannot load fixture {}: {e}", path.display()))
}

/// The JSON metadata (`doc`, `prompts`, ...) of a fixture file.
pub fn fixture_metadata(name: &str) -> HashMap<String, String> {
    let path = repo_path(&format!("tests/fixtures/reference/{name}.safetensors"));
    let bytes = std::fs::read(&path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    meta.metadata().clone().unwrap_or_default()
}

pub fn get(f: &HashMap<String, Tensor>, key: &str) -> Tensor {
    f.get(key)
        .unwrap_or_else(|| panic!("fixture has no key {key}"))
        .clone()
}

pub fn max_abs(t: &Tensor) -> f64 {
    t.to_device(&Device::Cpu)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.shape(), b.shape(), "shape mismatch");
    let a = a
        .to_device(&Device::Cpu)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap();
    let b = b
        .to_device(&Device::Cpu)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap();
    max_abs(&(a - b).unwrap())
}

/// Single-forward parity: max|diff| <= tol * max(1, max|ref|). Returns the measured ratio.
pub fn assert_close(what: &str, got: &Tensor, reference: &Tensor, tol: f64) -> f64 {
    let diff = max_abs_diff(got, reference);
    let scale = max_abs(reference).max(1.0);
    eprintln!(
        "{what}: max|diff| = {diff:.3e} (scale {scale:.3}, bound {:.3e})",
        tol * scale
    );
    assert!(
        diff <= tol * scale,
        "{what}: max|diff| = {diff:e} exceeds {tol:e} * {scale}"
    );
    diff / scale
}

/// Reads every tensor of `components` of the folder through the single file's key map and
/// asserts each equal to the folder's, bit for bit; returns how many were read.
#[allow(dead_code)]
pub fn tensors_read_equal(
    folder: &tessera::models::ModelDir,
    single: &tessera::models::ModelDir,
    components: &[&str],
) -> usize {
    let rt = runtime();
    let mut read = 0;
    for &component in components {
        let stem = match component {
            "unet" | "vae" => "diffusion_pytorch_model",
            _ => "model",
        };
        let (_, entries) = folder.weight_entries(component, stem).unwrap();
        let a = folder
            .var_builder(&rt, component, stem, DType::F32)
            .unwrap();
        let b = single
            .var_builder(&rt, component, stem, DType::F32)
            .unwrap();
        for (name, _, _) in entries {
            let want = a.get_unchecked(&name).unwrap();
            let got = b
                .get(want.shape(), &name)
                .unwrap_or_else(|e| panic!("{component} {name}: {e}"));
            assert_eq!(max_abs_diff(&got, &want), 0.0, "{component} {name}");
            read += 1;
        }
    }
    read
}
