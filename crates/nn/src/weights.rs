//! Safetensors weights read tensor by tensor with positioned reads instead of a memory map.
//!
//! Pages of a mapped file that the loader touched count as the process's resident memory for as
//! long as the map lives, so loading a 3.4 GB UNet through a map shows twice its size in RSS,
//! and a streamed UNet would end each forward pass with the whole file resident. Plain reads go
//! through the page cache, which the kernel drops under pressure (inside a memory cgroup too).

use crate::runtime::host;
use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

struct Entry {
    dtype: DType,
    shape: Vec<usize>,
    /// Byte range in the file.
    start: u64,
    len: usize,
}

pub struct WeightFile {
    path: PathBuf,
    file: File,
    tensors: HashMap<String, Entry>,
    /// The header's `__metadata__` (string to string), e.g. a LoRA's alpha.
    metadata: HashMap<String, String>,
}

#[derive(serde::Deserialize)]
struct HeaderEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: (u64, u64),
}

fn bad(path: &Path, msg: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(format!("{}: {msg}", path.display()))
}

fn dtype(name: &str) -> Option<DType> {
    Some(match name {
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "F64" => DType::F64,
        "I64" => DType::I64,
        "U8" => DType::U8,
        "U32" => DType::U32,
        _ => return None,
    })
}

impl std::fmt::Debug for WeightFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WeightFile({})", self.path.display())
    }
}

impl WeightFile {
    /// Read the header (names, dtypes, shapes, offsets); tensors are read when asked for.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| bad(path, e))?;
        let mut len = [0u8; 8];
        file.read_exact_at(&mut len, 0).map_err(|e| bad(path, e))?;
        let header_len = u64::from_le_bytes(len);
        if header_len > 100 << 20 {
            return Err(bad(path, "not a safetensors file (header too large)"));
        }
        let mut header = vec![0u8; header_len as usize];
        file.read_exact_at(&mut header, 8)
            .map_err(|e| bad(path, e))?;
        let mut raw: HashMap<String, serde_json::Value> =
            serde_json::from_slice(&header).map_err(|e| bad(path, e))?;
        let metadata = raw
            .remove("__metadata__")
            .and_then(|m| serde_json::from_value(m).ok())
            .unwrap_or_default();
        let mut tensors = HashMap::with_capacity(raw.len());
        for (name, value) in raw {
            let h: HeaderEntry = serde_json::from_value(value).map_err(|e| bad(path, e))?;
            let dtype = dtype(&h.dtype)
                .ok_or_else(|| bad(path, format!("{name}: unsupported dtype {}", h.dtype)))?;
            let (a, b) = h.data_offsets;
            let len = b.checked_sub(a).ok_or_else(|| bad(path, "bad offsets"))? as usize;
            if len != h.shape.iter().product::<usize>() * dtype.size_in_bytes() {
                return Err(bad(path, format!("{name}: size does not match its shape")));
            }
            let start = 8 + header_len + a;
            tensors.insert(
                name,
                Entry {
                    dtype,
                    shape: h.shape,
                    start,
                    len,
                },
            );
        }
        Ok(Self {
            path: path.to_path_buf(),
            file,
            tensors,
            metadata,
        })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The header's `__metadata__` entries.
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }

    /// Every tensor's name, stored dtype and element count, from the header.
    pub fn entries(&self) -> impl Iterator<Item = (&str, DType, u64)> {
        self.tensors.iter().map(|(name, e)| {
            let n = e.shape.iter().product::<usize>() as u64;
            (name.as_str(), e.dtype, n)
        })
    }

    /// Every tensor's name and shape, from the header.
    pub fn shapes(&self) -> impl Iterator<Item = (&str, &[usize])> {
        self.tensors
            .iter()
            .map(|(name, e)| (name.as_str(), e.shape.as_slice()))
    }

    /// Every tensor's name and element count, from the header.
    pub fn numels(&self) -> impl Iterator<Item = (&str, u64)> {
        self.tensors
            .iter()
            .map(|(name, e)| (name.as_str(), e.shape.iter().product::<usize>() as u64))
    }

    /// One tensor, read on the host and moved to `device` in `dtype`.
    pub fn load(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        let e = self
            .tensors
            .get(name)
            .ok_or_else(|| bad(&self.path, format!("no tensor named {name}")))?;
        let read = |buf: &mut [u8]| {
            self.file
                .read_exact_at(buf, e.start)
                .map_err(|err| bad(&self.path, err))
        };
        if e.dtype == DType::F32 && cfg!(target_endian = "little") {
            // Read straight into the tensor's own buffer: no transient byte copy, which for the
            // largest streamed layer (180 MiB) would set the peak.
            let mut values = vec![0f32; e.len / 4];
            read(bytemuck::cast_slice_mut(&mut values))?;
            return Tensor::from_vec(values, e.shape.as_slice(), &host())?
                .to_device(device)?
                .to_dtype(dtype);
        }
        let mut bytes = vec![0u8; e.len];
        read(&mut bytes)?;
        Tensor::from_raw_buffer(&bytes, e.dtype, &e.shape, &host())?
            .to_device(device)?
            .to_dtype(dtype)
    }

    /// A `VarBuilder` over this file whose tensors land on `device` in `dtype`.
    pub fn into_var_builder(self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self), dtype, device.clone())
    }
}

impl SimpleBackend for WeightFile {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let t = self.load(name, dtype, device)?;
        if t.shape() != &s {
            return Err(candle_core::Error::UnexpectedShape {
                msg: format!("{}: shape mismatch for {name}", self.path.display()),
                expected: s,
                got: t.shape().clone(),
            });
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        self.load(name, dtype, device)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

/// Save tensors to a safetensors file atomically.
pub fn save_tensors(path: &Path, tensors: &[(&str, &Tensor)]) -> tessera_core::Result<()> {
    use std::io::Write;
    use tessera_core::Error;
    let map: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, t)| (k.to_string(), (*t).clone()))
        .collect();
    let bytes = safetensors::serialize(map.iter().map(|(k, t)| (k.as_str(), t)), None)
        .map_err(|e| Error::Other(format!("serialising {}: {e}", path.display())))?;
    tessera_core::files::write_atomic(path, |file| {
        file.write_all(&bytes)
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))
    })
}

/// Read one named tensor from a safetensors file onto the host, with errors that name the
/// file and the tensor.
pub fn load_tensor(path: &Path, name: &str) -> tessera_core::Result<Tensor> {
    use tessera_core::Error;
    let tensors = candle_core::safetensors::load(path, &host()).map_err(|e| {
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
