//! A whole-image activation kept out of the heap: an unlinked temporary file read and written
//! by regions, so a tiled VAE pass holds one tile at a time whatever the image size.
//! Pixels are stored channel-last (HWC), so one image row of a region is one contiguous read.
//! Values are native-endian f32: the file is private to this process, so no byte conversion.

use crate::runtime::host;
use candle_core::{Result, Tensor};
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;

pub struct Store {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    file: File,
}

fn io(e: std::io::Error) -> candle_core::Error {
    candle_core::Error::Msg(format!("tiled VAE scratch file: {e}"))
}

impl Store {
    pub fn new(c: usize, h: usize, w: usize) -> Result<Self> {
        let dir = std::env::var_os("TESSERA_TMPDIR")
            .map(Into::into)
            .unwrap_or_else(std::env::temp_dir);
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!(".tessera-vae-{}-{n}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io)?;
        // Unlinked at once: the space is freed when the store is dropped, even on a crash.
        std::fs::remove_file(&path).map_err(io)?;
        file.set_len((c * h * w * 4) as u64).map_err(io)?;
        Ok(Self { c, h, w, file })
    }

    /// A whole tensor (1, C, H, W) as a store.
    pub fn from_tensor(t: &Tensor) -> Result<Self> {
        let (_, c, h, w) = t.dims4()?;
        let mut s = Self::new(c, h, w)?;
        s.write(0, 0, t)?;
        Ok(s)
    }

    /// Write a (1, C, h, w) tile with its top-left corner at (y, x).
    pub fn write(&mut self, y: usize, x: usize, t: &Tensor) -> Result<()> {
        let (_, c, h, w) = t.dims4()?;
        debug_assert_eq!(c, self.c);
        let hwc: Vec<f32> = t
            .squeeze(0)?
            .permute((1, 2, 0))?
            .flatten_all()?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1()?;
        for (row, values) in hwc.chunks_exact(w * c).enumerate().take(h) {
            let offset = (((y + row) * self.w + x) * c * 4) as u64;
            self.file
                .write_all_at(bytemuck::cast_slice(values), offset)
                .map_err(io)?;
        }
        Ok(())
    }

    /// Read rows × cols (clipped by the caller to the image) as (1, C, h, w).
    pub fn read(&self, rows: Range<usize>, cols: Range<usize>) -> Result<Tensor> {
        let (h, w, c) = (rows.len(), cols.len(), self.c);
        let mut data = vec![0f32; h * w * c];
        for (y, values) in rows.zip(data.chunks_exact_mut(w * c)) {
            let offset = ((y * self.w + cols.start) * c * 4) as u64;
            self.file
                .read_exact_at(bytemuck::cast_slice_mut(values), offset)
                .map_err(io)?;
        }
        Tensor::from_vec(data, (h, w, c), &host())?
            .permute((2, 0, 1))?
            .unsqueeze(0)?
            .contiguous()
    }

    pub fn read_all(&self) -> Result<Tensor> {
        self.read(0..self.h, 0..self.w)
    }
}
