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
    let size = (img.width() as usize, img.height() as usize);
    save_png_rows(path, size, text, |put| put(img.as_raw()))
}

/// Write a `(width, height)` 8-bit RGB PNG whose pixel rows `fill` hands, top to bottom, to
/// the function it is given (any number of whole rows at a time): the picture is encoded as it
/// comes and never held whole. Atomic as [`save_png`]; a short picture is an error.
pub fn save_png_rows(
    path: &Path,
    (width, height): (usize, usize),
    text: &[(&str, String)],
    fill: impl FnOnce(&mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()>,
) -> Result<()> {
    write_atomic(path, |file| {
        let mut buf = std::io::BufWriter::new(file);
        let mut enc = png::Encoder::new(&mut buf, width as u32, height as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        for (k, v) in text {
            enc.add_itxt_chunk(k.to_string(), v.clone())
                .map_err(|e| Error::Other(format!("png text chunk {k}: {e}")))?;
        }
        let png_err =
            |e: png::EncodingError| Error::Other(format!("encoding {}: {e}", path.display()));
        let io_err = |e| Error::io(format!("writing {}", path.display()), e);
        let mut header = enc.write_header().map_err(png_err)?;
        let mut stream = header.stream_writer().map_err(png_err)?;
        let mut written = 0;
        fill(&mut |rows: &[u8]| {
            written += rows.len();
            stream.write_all(rows).map_err(io_err)
        })?;
        if written != width * height * 3 {
            return Err(Error::Other(format!(
                "{}: {written} bytes of pixels for a {width}x{height} picture",
                path.display()
            )));
        }
        stream.finish().map_err(png_err)?;
        header.finish().map_err(png_err)?;
        buf.flush().map_err(io_err)
    })
}
