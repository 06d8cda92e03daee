//! Pictures <-> image tensors: `[-1, 1]` NCHW f32 on the model side, 8-bit RGB on disk.

use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use image::imageops::FilterType;
use std::path::Path;

/// An image tensor (1,3,H,W) in [-1,1] as 8-bit RGB, the way diffusers' `numpy_to_pil` does it:
/// `round(clamp(x/2+0.5, 0, 1) * 255)`.
pub fn tensor_to_rgb(image: &Tensor) -> Result<image::RgbImage> {
    let (_, c, h, w) = image.dims4()?;
    if c != 3 {
        return Err(Error::Other(format!("expected 3 image channels, got {c}")));
    }
    let x = ((image.to_dtype(DType::F32)?.squeeze(0)? / 2.0)? + 0.5)?.clamp(0f32, 1f32)?;
    let hwc: Vec<f32> = x.permute((1, 2, 0))?.flatten_all()?.to_vec1()?;
    let bytes = hwc.iter().map(|v| (v * 255.0).round() as u8).collect();
    Ok(image::RgbImage::from_raw(w as u32, h as u32, bytes).expect("size matches"))
}

/// Read a picture as a (1,3,h,w) tensor in [-1, 1] (`x/127.5 - 1`), resized to `(w, h)` with
/// Lanczos3 unless it already has that size (then it is used as is).
pub fn load_image(path: &Path, size: (usize, usize)) -> Result<Tensor> {
    let img = image::open(path).map_err(|e| {
        Error::input(
            path,
            None,
            format!("cannot read the picture: {e}"),
            "give a PNG or JPEG file",
        )
    })?;
    rgb_to_tensor(&img.to_rgb8(), size)
}

/// An RGB picture as a (1,3,h,w) tensor in [-1, 1], resized with Lanczos3 when needed.
pub fn rgb_to_tensor(img: &image::RgbImage, (w, h): (usize, usize)) -> Result<Tensor> {
    let resized;
    let img = if (img.width() as usize, img.height() as usize) == (w, h) {
        img
    } else {
        resized = image::imageops::resize(img, w as u32, h as u32, FilterType::Lanczos3);
        &resized
    };
    let data: Vec<f32> = img
        .as_raw()
        .iter()
        .map(|&v| v as f32 / 127.5 - 1.0)
        .collect();
    let t = Tensor::from_vec(data, (h, w, 3), &Device::Cpu)?;
    Ok(t.permute((2, 0, 1))?.unsqueeze(0)?.contiguous()?)
}

/// Resize an image tensor (1,3,h,w) in [-1, 1] to `(w, h)` with Lanczos3, in f32 (no 8-bit
/// rounding between the guide and its upscale).
pub fn resize_tensor(image: &Tensor, (w, h): (usize, usize)) -> Result<Tensor> {
    let (_, _, ih, iw) = image.dims4()?;
    let hwc: Vec<f32> = image
        .to_dtype(DType::F32)?
        .squeeze(0)?
        .permute((1, 2, 0))?
        .flatten_all()?
        .to_vec1()?;
    let src = image::Rgb32FImage::from_raw(iw as u32, ih as u32, hwc).expect("size matches");
    let dst = image::imageops::resize(&src, w as u32, h as u32, FilterType::Lanczos3);
    let t = Tensor::from_vec(dst.into_raw(), (h, w, 3), &Device::Cpu)?;
    Ok(t.permute((2, 0, 1))?.unsqueeze(0)?.contiguous()?)
}
