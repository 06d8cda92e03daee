//! Writing results: PNG with text chunks and safetensors latents, always atomically
//! (written to a temporary file beside the target, then renamed), so an interrupted or failed
//! run never leaves a partial file.

use crate::{Error, Result};
use candle_core::Tensor;
use std::io::Write;
use std::path::Path;

/// Write `bytes` to `path` via a temporary sibling and a rename.
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut std::fs::File) -> Result<()>,
) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("out");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)
            .map_err(|e| Error::io(format!("creating {}", tmp.display()), e))?;
        write(&mut file)?;
        file.sync_all()
            .map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
        std::fs::rename(&tmp, path)
            .map_err(|e| Error::io(format!("renaming to {}", path.display()), e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Save an RGB image as PNG with `tEXt` chunks (e.g. the resolved spec and A1111 `parameters`).
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

/// Save tensors to a safetensors file atomically.
pub fn save_tensors(path: &Path, tensors: &[(&str, &Tensor)]) -> Result<()> {
    let map: std::collections::HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, t)| (k.to_string(), (*t).clone()))
        .collect();
    let bytes = safetensors::serialize(map.iter().map(|(k, t)| (k.as_str(), t)), None)
        .map_err(|e| Error::Other(format!("serialising {}: {e}", path.display())))?;
    write_atomic(path, |file| {
        file.write_all(&bytes)
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))
    })
}

/// Read one named tensor from a safetensors file, with errors that name file and tensor.
pub fn load_tensor(path: &Path, name: &str) -> Result<Tensor> {
    let tensors = candle_core::safetensors::load(path, &candle_core::Device::Cpu).map_err(|e| {
        Error::input(
            path,
            None,
            format!("cannot read safetensors: {e}"),
            "give a .safetensors file",
        )
    })?;
    tensors.get(name).cloned().ok_or_else(|| {
        let keys: Vec<&String> = tensors.keys().collect();
        Error::input(
            path,
            Some(name),
            format!("no tensor named {name:?} (found {keys:?})"),
            format!("store the tensor under the name {name:?}"),
        )
    })
}
