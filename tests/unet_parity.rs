//! UNet forward parity with diffusers (fixture c_unet): two shapes, three timesteps, f32.

mod common;
use candle_core::DType;
use common::*;
use tessera::model::ModelDir;

#[test]
fn unet_matches_diffusers_at_three_timesteps_and_two_shapes() {
    let f = fixture("c_unet");
    let unet = ModelDir::open(tiny_model_dir())
        .unwrap()
        .load_unet(DType::F32)
        .unwrap();
    for case in ["b2_8x8", "b1_16x24"] {
        let sample = get(&f, &format!("{case}.sample"));
        let ehs = get(&f, &format!("{case}.encoder_hidden_states"));
        for t in [999, 500, 1] {
            let out = unet.forward(&sample, t as f64, &ehs).unwrap();
            let reference = get(&f, &format!("{case}.t{t}.out"));
            assert_close(&format!("unet {case} t={t}"), &out, &reference, 1e-4);
        }
    }
}
