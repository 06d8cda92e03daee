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
