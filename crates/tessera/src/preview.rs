//! Previews of a render in progress: `<output stem>.preview.png`, written atomically every N
//! steps of the canvas pass from the current latents through a fixed linear latent-to-RGB map
//! (no extra weights, no VAE: microseconds per step), at latent resolution upscaled 2x.
//! They only read the latents, so the final output is unchanged by them.

use crate::output;
use candle_core::{DType, Tensor};
use std::path::{Path, PathBuf};
use tessera_core::{Error, Result};

/// How each of the 4 latent channels of the Stable Diffusion 1.x/2.x VAE adds to R, G, B (a
/// least-squares approximation of the decoder published by Keturn in 2022, values widely used
/// by SD front ends). Other model families (other latent spaces) need their own map.
const SD_LATENT_RGB: [[f32; 3]; 4] = [
    [0.298, 0.207, 0.208],
    [0.187, 0.286, 0.173],
    [-0.158, 0.189, 0.264],
    [-0.184, -0.271, -0.473],
];

/// Where a render's preview lives.
pub fn path_for(output: &Path) -> PathBuf {
    output.with_extension("preview.png")
}

/// The approximate picture of `latents` (1, 4, h, w) as RGB, `2w x 2h`.
pub fn project(latents: &Tensor) -> Result<image::RgbImage> {
    let (_, c, h, w) = latents.dims4()?;
    if c != SD_LATENT_RGB.len() {
        return Err(Error::Other(format!(
            "no latent preview map for {c}-channel latents"
        )));
    }
    let v: Vec<f32> = latents.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let plane = h * w;
    let mut img = image::RgbImage::new(2 * w as u32, 2 * h as u32);
    for y in 0..h {
        for x in 0..w {
            let mut rgb = [0f32; 3];
            for (ch, row) in SD_LATENT_RGB.iter().enumerate() {
                let l = v[ch * plane + y * w + x];
                for k in 0..3 {
                    rgb[k] += l * row[k];
                }
            }
            let px = image::Rgb(rgb.map(|c| (((c + 1.0) * 127.5).clamp(0.0, 255.0)) as u8));
            for (dy, dx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                img.put_pixel((2 * x + dx) as u32, (2 * y + dy) as u32, px);
            }
        }
    }
    Ok(img)
}

/// Write the preview of `latents` for the render whose output is `output`.
pub fn write(output: &Path, latents: &Tensor) -> Result<()> {
    output::save_png(&path_for(output), &project(latents)?, &[])
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_nn::runtime::host;

    #[test]
    fn projection_follows_the_map() {
        // Channel 0 at 1, the rest 0: the first row of the map.
        let mut v = vec![0f32; 4 * 2 * 3];
        v[0] = 1.0;
        let t = Tensor::from_vec(v, (1, 4, 2, 3), &host()).unwrap();
        let img = project(&t).unwrap();
        assert_eq!((img.width(), img.height()), (6, 4));
        let want = SD_LATENT_RGB[0].map(|c| ((c + 1.0) * 127.5) as u8);
        assert_eq!(img.get_pixel(1, 1).0, want);
        assert_eq!(img.get_pixel(2, 0).0, [127, 127, 127]);
    }
}
