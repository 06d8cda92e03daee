//! UNet forward parity with diffusers (fixture c_unet): two shapes, three timesteps, f32.

use crate::common;
use candle_core::DType;
use common::*;
use tessera::models::ModelDir;

#[test]
fn unet_matches_diffusers_at_three_timesteps_and_two_shapes() {
    let f = fixture("c_unet");
    let unet = ModelDir::open(tiny_model_dir())
        .unwrap()
        .load_unet(&runtime(), DType::F32)
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

#[test]
fn streaming_and_chunked_attention_change_nothing() {
    let f = fixture("c_unet");
    let dir = ModelDir::open(tiny_model_dir()).unwrap();
    let resident = dir.load_unet(&runtime(), DType::F32).unwrap();
    let streaming = dir.load_unet_streaming(&runtime(), DType::F32).unwrap();
    let mut chunked = dir.load_unet(&runtime(), DType::F32).unwrap();
    // Forces one query row per attention chunk and one token per feed-forward chunk.
    chunked.attention_budget = 1024;
    let sample = get(&f, "b1_16x24.sample");
    let ehs = get(&f, "b1_16x24.encoder_hidden_states");
    let a = resident.forward(&sample, 500.0, &ehs).unwrap();
    let b = streaming.forward(&sample, 500.0, &ehs).unwrap();
    assert_eq!(max_abs_diff(&a, &b), 0.0, "streaming must be bit-identical");
    let c = chunked.forward(&sample, 500.0, &ehs).unwrap();
    let d = max_abs_diff(&a, &c);
    eprintln!("chunked attention vs one piece: max|diff| {d:e}");
    // Chunks change the matmul kernels' summation order (a single row takes another path), so
    // values move by float rounding only (2.3e-6 measured on outputs of order 1), 10x below the
    // tolerance against diffusers above.
    assert!(d <= 1e-5, "chunked attention differs by {d}");
}

/// On the CPU, `--dtype f16`/`bf16` keeps the UNet's weights narrow with f32 activations: the
/// output moves by the weights' rounding (f16: 11-bit, bf16: 8-bit mantissas) and, on a CPU
/// with AVX512_BF16, by the activations' rounding to bf16 in the products (sums stay f32); the
/// streamed path packs and widens the same way.
#[test]
fn half_precision_weights_compute_in_f32_on_the_cpu() {
    if !runtime().device.is_cpu() {
        eprintln!("skipped: a GPU computes in the precision asked for (this is the CPU's path)");
        return;
    }
    let f = fixture("c_unet");
    let dir = ModelDir::open(tiny_model_dir()).unwrap();
    let sample = get(&f, "b1_16x24.sample");
    let ehs = get(&f, "b1_16x24.encoder_hidden_states");
    let reference = get(&f, "b1_16x24.t500.out");
    // Measured: f16 1.1e-3; bf16 9.7e-3 of the output's scale computing in f32 (Xeon, or
    // `TESSERA_NO_BF16`), 1.29e-2 through the bf16 kernels (AMD EPYC with AVX512_BF16).
    for (dtype, tol) in [(DType::F16, 5e-3), (DType::BF16, 3e-2)] {
        let unet = dir.load_unet(&runtime(), dtype).unwrap();
        assert_eq!(unet.dtype, DType::F32, "the CPU computes in f32");
        let out = unet.forward(&sample, 500.0, &ehs).unwrap();
        assert_eq!(out.dtype(), DType::F32);
        assert_close(&format!("unet {dtype:?} weights"), &out, &reference, tol);
        let streamed = dir.load_unet_streaming(&runtime(), dtype).unwrap();
        let again = streamed.forward(&sample, 500.0, &ehs).unwrap();
        assert_eq!(
            max_abs_diff(&out, &again),
            0.0,
            "streaming must be bit-identical"
        );
    }
}
