//! The tiled VAE equals the untiled one (tiny model): PSNR and max abs error at several tile
//! sizes, including ones that do not divide the image, beside a naive tiled decode (per-tile
//! GroupNorm and attention, linear blending) to show what whole-image statistics buy.

use crate::common;
use candle_core::{DType, Tensor};
use common::*;
use tessera::models::ModelDir;
use tessera::nn::vae::{tiled, AutoencoderKl};
use tessera::noise::{NoiseSource, SeededNoise};

fn vae() -> AutoencoderKl {
    ModelDir::open(tiny_model_dir())
        .unwrap()
        .load_vae(&runtime(), DType::F32)
        .unwrap()
}

/// PSNR for images in [-1, 1] (peak-to-peak 2).
fn psnr(a: &Tensor, b: &Tensor) -> f64 {
    let mse = (a - b)
        .unwrap()
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap() as f64;
    10.0 * (4.0 / mse).log10()
}

/// The classic approach: decode overlapping latent tiles independently, blend linearly.
fn naive_decode(vae: &AutoencoderKl, z: &Tensor, tile: usize, overlap: usize) -> Tensor {
    let (_, _, h, w) = z.dims4().unwrap();
    let mut num = Tensor::zeros((1, 3, 8 * h, 8 * w), DType::F32, z.device()).unwrap();
    let mut den = num.clone();
    for r in tessera::geometry::grid(h, w, (tile, tile), overlap) {
        let img = vae
            .decode(&z.narrow(2, r.y, r.h).unwrap().narrow(3, r.x, r.w).unwrap())
            .unwrap();
        let ramp = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|i| ((i.min(n - 1 - i) + 1) as f32).min(8.0 * overlap as f32 / 2.0))
                .collect()
        };
        let (ry, rx) = (ramp(8 * r.h), ramp(8 * r.w));
        let wts: Vec<f32> = ry
            .iter()
            .flat_map(|a| rx.iter().map(move |b| a * b))
            .collect();
        let wt = Tensor::from_vec(wts, (1, 1, 8 * r.h, 8 * r.w), z.device()).unwrap();
        let region = [
            0..1,
            0..3,
            8 * r.y..8 * (r.y + r.h),
            8 * r.x..8 * (r.x + r.w),
        ];
        let n = (num.i(region.clone()) + img.broadcast_mul(&wt).unwrap()).unwrap();
        let d = (den.i(region.clone()) + wt.broadcast_as(n.shape()).unwrap()).unwrap();
        num = num.slice_assign(&region, &n).unwrap();
        den = den.slice_assign(&region, &d).unwrap();
    }
    (num / den).unwrap()
}

trait Crop {
    fn i(&self, r: [std::ops::Range<usize>; 4]) -> Tensor;
}

impl Crop for Tensor {
    fn i(&self, r: [std::ops::Range<usize>; 4]) -> Tensor {
        use candle_core::IndexOp;
        IndexOp::i(
            self,
            (r[0].clone(), r[1].clone(), r[2].clone(), r[3].clone()),
        )
        .unwrap()
    }
}

#[test]
fn tiled_decode_equals_untiled_at_several_tile_sizes() {
    let vae = vae();
    let z = (SeededNoise::new(7).noise(&(1, 4, 40, 56).into()).unwrap() / 0.18215).unwrap();
    let z = z.to_device(&runtime().device).unwrap();
    let full = vae.decode(&z).unwrap();
    for tile_px in [64, 96, 136, 200] {
        let tiled = tiled::decode(&vae.decoder, &z, tile_px, None).unwrap();
        let (p, m) = (psnr(&tiled, &full), max_abs_diff(&tiled, &full));
        eprintln!("tiled decode, {tile_px} px tiles: PSNR {p:.1} dB, max abs error {m:.2e}");
        assert!(p >= 50.0, "tile {tile_px}: PSNR {p}");
    }
    // Scratch in files instead of RAM changes nothing, nor do stores split between the two
    // (their first channels in RAM: a full-resolution store here is 18 MB).
    let in_ram = tiled::decode(&vae.decoder, &z, 96, None).unwrap();
    for mib in [0, 3, 10, 30] {
        let split = tiled::decode(&vae.decoder, &z, 96, Some(mib << 20)).unwrap();
        assert_eq!(
            max_abs_diff(&split, &in_ram),
            0.0,
            "{mib} MiB of RAM scratch, the rest in files, differs from all in RAM"
        );
    }
    let naive = naive_decode(&vae, &z, 16, 4);
    let (p, m) = (psnr(&naive, &full), max_abs_diff(&naive, &full));
    eprintln!("naive per-tile GroupNorm decode, 128 px tiles, 32 px overlap: PSNR {p:.1} dB, max abs error {m:.2e}");
    assert!(
        p < 50.0,
        "the naive baseline should be visibly worse (PSNR {p})"
    );
}

#[test]
fn tiled_encode_equals_untiled() {
    let vae = vae();
    let f = fixture("d_vae_encode");
    let image = get(&f, "128x192.image");
    let full = vae.encode(&image).unwrap();
    for tile_px in [48, 64, 88] {
        let tiled = tiled::encode(&vae.encoder, &image, tile_px, None).unwrap();
        let (dm, dl) = (
            max_abs_diff(&tiled.mean, &full.mean),
            max_abs_diff(&tiled.logvar, &full.logvar),
        );
        eprintln!("tiled encode, {tile_px} px tiles: max abs error mean {dm:.2e}, logvar {dl:.2e}");
        assert!(
            dm <= 1e-4 * max_abs(&full.mean).max(1.0)
                && dl <= 1e-4 * max_abs(&full.logvar).max(1.0)
        );
    }
}
