//! Writing results: PNG with text chunks, always atomically (a temporary sibling, then a
//! rename), so an interrupted or failed run never leaves a partial file. Latents are saved by
//! `tessera_nn::weights::save_tensors`, atomically too.

use std::io::Write;
use std::path::Path;
use tessera_core::files::write_atomic;
use tessera_core::{Error, Result};

pub use tessera_nn::weights::{load_tensor, save_tensors};

/// Save an RGB image as PNG with `iTXt` chunks (e.g. the resolved spec and A1111 `parameters`).
pub fn save_png(path: &Path, img: &image::RgbImage, text: &[(&str, String)]) -> Result<()> {
    write_atomic(path, |file| {
        let mut buf = std::io::BufWriter::new(file);
        let mut enc = png::Encoder::new(&mut buf, img.width(), img.height());
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        for (k, v) in text {
            enc.add_itxt_chunk(k.to_string(), v.clone())
                .map_err(|e| Error::Other(format!("png text chunk {k}: {e}")))?;
        }
        let png_err =
            |e: png::EncodingError| Error::Other(format!("encoding {}: {e}", path.display()));
        let mut w = enc.write_header().map_err(png_err)?;
        w.write_image_data(img.as_raw()).map_err(png_err)?;
        w.finish().map_err(png_err)?;
        buf.flush()
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))
    })
}
