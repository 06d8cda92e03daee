//! VAE parity with diffusers' AutoencoderKL (fixtures d_vae_decode, d_vae_encode), f32.

use crate::common;
use candle_core::DType;
use common::*;
use tessera::models::ModelDir;

#[test]
fn vae_decode_matches_diffusers() {
    let f = fixture("d_vae_decode");
    let vae = ModelDir::open(tiny_model_dir())
        .unwrap()
        .load_vae(&runtime(), DType::F32)
        .unwrap();
    for case in ["8x8", "16x24"] {
        let out = vae
            .decode(&get(&f, &format!("{case}.latents_scaled")))
            .unwrap();
        assert_close(
            &format!("vae decode {case}"),
            &out,
            &get(&f, &format!("{case}.decoded")),
            1e-4,
        );
    }
}

#[test]
fn vae_encode_matches_diffusers() {
    let f = fixture("d_vae_encode");
    let vae = ModelDir::open(tiny_model_dir())
        .unwrap()
        .load_vae(&runtime(), DType::F32)
        .unwrap();
    for case in ["64x64", "128x192"] {
        let dist = vae.encode(&get(&f, &format!("{case}.image"))).unwrap();
        assert_close(
            &format!("vae mean {case}"),
            &dist.mean,
            &get(&f, &format!("{case}.mean")),
            1e-4,
        );
        assert_close(
            &format!("vae logvar {case}"),
            &dist.logvar,
            &get(&f, &format!("{case}.logvar")),
            1e-4,
        );
        assert_close(
            &format!("vae std {case}"),
            &dist.std().unwrap(),
            &get(&f, &format!("{case}.std")),
            1e-4,
        );
    }
}

/// `--dtype bf16` on a CPU with AVX512_BF16 loads the VAE's weights in bf16 and multiplies in
/// bf16 with f32 activations (elsewhere the weights are f32, as before): the decode stays
/// within bf16's rounding of diffusers' f32 output, and tiles add no error beyond that
/// rounding. (Tiled and whole differ by f32 summation order, 3e-6 in f32; rounding to bf16
/// turns such a difference into a bf16 step now and then, so they no longer agree to f32
/// precision, while a naive tiled decode is 0.7 off. The tiled decode also keeps the
/// activations inside each resnet in bf16 between its convolutions: 2.0e-2 from the whole
/// decode, 1.7e-2 with them in f32, measured on the EPYC.)
#[test]
fn vae_decode_with_bf16_products_stays_close_and_tiles_within_its_rounding() {
    let rt = runtime().with_precision(tessera::choices::Precision::BF16);
    let weights = rt.vae_f32_weight_dtype();
    let f = fixture("d_vae_decode");
    let vae = ModelDir::open(tiny_model_dir())
        .unwrap()
        .load_vae(&rt, weights)
        .unwrap();
    let z = get(&f, "16x24.latents_scaled");
    let whole = vae.decode(&z).unwrap();
    assert_eq!(whole.dtype(), DType::F32);
    let reference = get(&f, "16x24.decoded");
    // Measured (EPYC, bf16 kernels): 7.5e-3 of the output's scale.
    assert_close(
        &format!("vae decode, {weights:?} weights"),
        &whole,
        &reference,
        3e-2,
    );
    let rounding = max_abs_diff(&whole, &reference);
    for tile in [64, 96] {
        let tiled = tessera::nn::vae::tiled::decode(&vae.decoder, &z, tile, None).unwrap();
        let d = max_abs_diff(&tiled, &whole);
        eprintln!("tiled ({tile} px) against whole, {weights:?} weights: max|diff| {d:.3e}");
        assert!(
            d <= rounding.max(1e-4),
            "tiles add {d}, the rounding itself {rounding}"
        );
    }
    // Stores read only by a convolution keep bf16 values here (in RAM and in files alike):
    // splitting them between the two changes nothing.
    let in_ram = tessera::nn::vae::tiled::decode(&vae.decoder, &z, 64, None).unwrap();
    for mib in [0, 1, 3] {
        let split = tessera::nn::vae::tiled::decode(&vae.decoder, &z, 64, Some(mib << 20)).unwrap();
        let d = max_abs_diff(&split, &in_ram);
        assert_eq!(d, 0.0, "{mib} MiB of RAM scratch, the rest in files");
    }
}
