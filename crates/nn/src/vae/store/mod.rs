//! A whole-image activation between two layers of the tiled VAE: in RAM while the scratch
//! budget allows, else in an unlinked temporary file, so a tiled pass holds one band of rows
//! at a time whatever the image size. Bands are whole rows of channel-major planes: one
//! contiguous copy, read or write per channel and band, no re-layout.
//! Values are native-endian f32 (the file is private to this process, so no byte conversion);
//! in a pass whose layers multiply in bf16 anyway, a store read only by the next convolution
//! keeps bf16 ([`Store::conv_input`]): half its RAM and file traffic (a 1024² bf16 decode with
//! every store in files, 500 MiB cgroup: 55.8 -> 49.3 s).
//! On a GPU, bands stay in device memory while the budget allows (no round trip to the host).

mod planes;

use crate::runtime::host;
use candle_core::{DType, Device, Result, Tensor};
use planes::{read_host, scratch_file, write_host};
use std::cell::Cell;
use std::fs::File;
use std::ops::Range;
use std::rc::Rc;

/// The stores of one pass: the bytes that may still stay in memory (RAM, or the GPU's), and
/// the device and dtype the layers compute in, which every band read is given.
#[derive(Clone)]
pub struct Scratch {
    left: Rc<Cell<u64>>,
    /// The RAM of the last dropped in-memory store, for the next one: writing into fresh
    /// pages cost a page fault per 4 KiB (7 of the 8 s of system time of a 512² tiled decode,
    /// about a fifth of its wall time on 2 cores). Given up (freed) before any allocation it
    /// cannot serve, so it never adds to a peak.
    spare: Rc<Cell<Option<Vec<f32>>>>,
    /// Whether a budget limits the stores (`None` given: no).
    limited: bool,
    /// Stores read only as a convolution's input may keep bf16 values ([`Store::conv_input`]).
    bf16: bool,
    device: Device,
    dtype: DType,
}

impl Scratch {
    /// `None`: every store in memory. Bands are read back onto `like`'s device and dtype.
    /// `bf16`: the layers multiply in bf16, so stores read only as their input may be bf16.
    pub fn new(ram: Option<u64>, like: &Tensor, bf16: bool) -> Self {
        Self {
            left: Rc::new(Cell::new(ram.unwrap_or(u64::MAX))),
            spare: Rc::new(Cell::new(None)),
            limited: ram.is_some(),
            bf16: bf16 && like.device().is_cpu(),
            device: like.device().clone(),
            dtype: like.dtype(),
        }
    }

    /// Between two layers: a pass under a budget gives the device memory its dropped stores
    /// and bands leave pooled back to the device (see [`crate::device_memory::release_freed`]);
    /// one without keeps it pooled for the next layer (faster). `label` names the layer for
    /// `TESSERA_DEVICE_TRACE`.
    pub fn between_layers(&self, label: impl FnOnce() -> String) {
        if self.limited {
            crate::device_memory::release_freed(&self.device);
        }
        crate::device_memory::trace(&self.device, label);
    }

    /// Free the spare store memory now (before a large allocation that is not a store).
    pub fn release_spare(&self) {
        self.spare.set(None);
    }

    /// `n` zeroed values, in the spare store memory when it is large enough.
    fn ram(&self, n: usize) -> Vec<f32> {
        match self.spare.take() {
            // SAFETY: f32 has no invalid bit patterns, and every row of a store is written
            // before any is read (layers run one after the other, band by band).
            Some(mut v) if v.capacity() >= n => unsafe {
                v.set_len(n);
                v
            },
            _ => crate::kernels::unfilled(n),
        }
    }

    /// Keep `v` as the spare, or the spare already kept if that is larger.
    fn keep(&self, v: Vec<f32>) {
        let larger = match self.spare.take() {
            Some(old) if old.capacity() > v.capacity() => old,
            _ => v,
        };
        self.spare.set(Some(larger));
    }

    fn take(&self, bytes: u64) -> bool {
        let left = self.left.get();
        (bytes <= left)
            .then(|| self.left.set(left - bytes))
            .is_some()
    }

    fn give_back(&self, bytes: u64) {
        self.left.set(self.left.get().saturating_add(bytes));
    }
}

enum Place {
    /// `(c, h, w)` planes of [`Kept`] values: the first `in_ram` channels in RAM (`ram` viewed
    /// as the values), the rest in the file, so a store larger than what is left of the budget
    /// still uses all of it.
    Host {
        ram: Vec<f32>,
        in_ram: usize,
        file: Option<File>,
    },
    /// Bands as written, each `(first row, (1, C, rows, W))`: on the GPU, or, beyond the
    /// budget of a pass on a GPU, in host RAM as they came off it (one copy each way, no
    /// re-layout: planes were 25x slower, 93 s for a 2048² decode on an H200).
    Bands(Vec<(usize, Tensor)>),
}

pub struct Store {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    /// Host values kept as bf16.
    bf16: bool,
    place: Place,
    scratch: Scratch,
    held: u64,
}

impl Drop for Store {
    fn drop(&mut self) {
        self.scratch.give_back(self.held);
        if let Place::Host { ram, .. } = &mut self.place {
            if !ram.is_empty() {
                self.scratch.keep(std::mem::take(ram));
            }
        }
    }
}

/// `f` of `t`'s values as f32 on the host: read in place where `t` already is a contiguous
/// host f32 tensor, else from a converted copy.
fn host_f32(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<()>) -> Result<()> {
    match crate::kernels::usable(t) {
        true => crate::kernels::with_f32(t, f)?,
        false => f(&t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?),
    }
}

impl Store {
    pub fn new(c: usize, h: usize, w: usize, scratch: &Scratch) -> Result<Self> {
        Self::with_values(c, h, w, scratch, false)
    }

    /// A store read only as a convolution's input (through its GroupNorm), never added as a
    /// residual: bf16 where the pass multiplies in bf16 (the convolution rounds its input to
    /// bf16 anyway), f32 otherwise.
    pub fn conv_input(c: usize, h: usize, w: usize, scratch: &Scratch) -> Result<Self> {
        Self::with_values(c, h, w, scratch, scratch.bf16)
    }

    fn with_values(c: usize, h: usize, w: usize, scratch: &Scratch, bf16: bool) -> Result<Self> {
        let value_bytes = if bf16 { 2 } else { 4 };
        let (place, held) = match scratch.device.is_cpu() {
            // As many whole channels in RAM as the budget has left, the rest in a file.
            true => {
                let plane_bytes = (h * w * value_bytes) as u64;
                let in_ram = c.min((scratch.left.get() / plane_bytes) as usize);
                let held = in_ram as u64 * plane_bytes;
                scratch.take(held);
                let ram = match in_ram {
                    0 => Vec::new(),
                    _ => scratch.ram((held as usize).div_ceil(4)),
                };
                let file = (in_ram < c)
                    .then(|| scratch_file((c - in_ram) as u64 * plane_bytes))
                    .transpose()?;
                (Place::Host { ram, in_ram, file }, held)
            }
            // On a GPU the budget is the device's; what does not fit waits in host RAM (a
            // copy each way per band, far cheaper than a file).
            false => {
                let bytes = (c * h * w * scratch.dtype.size_in_bytes()) as u64;
                match scratch.take(bytes) {
                    true => (Place::Bands(Vec::new()), bytes),
                    false => (Place::Bands(Vec::new()), 0),
                }
            }
        };
        Ok(Self {
            c,
            h,
            w,
            bf16,
            place,
            scratch: scratch.clone(),
            held,
        })
    }

    /// A whole tensor (1, C, H, W) as a store.
    pub fn from_tensor(t: &Tensor, scratch: &Scratch) -> Result<Self> {
        let (_, c, h, w) = t.dims4()?;
        let mut s = Self::new(c, h, w, scratch)?;
        s.write_rows(0, t)?;
        Ok(s)
    }

    /// Write whole rows (1, C, rows, W) from row `y`.
    pub fn write_rows(&mut self, y: usize, t: &Tensor) -> Result<()> {
        let (_, c, rows, w) = t.dims4()?;
        debug_assert_eq!((c, w), (self.c, self.w));
        let (h, w_) = (self.h, self.w);
        match &mut self.place {
            Place::Bands(bands) => {
                let band = match self.held {
                    0 => t.to_device(&host())?,
                    _ => t.clone(),
                };
                bands.push((y, band))
            }
            // One task per channel, in RAM and in files: a serial copy left the other cores
            // idle (and took the fresh pages' faults on one thread).
            Place::Host { ram, in_ram, file } => host_f32(t, |src| match self.bf16 {
                true => write_host::<u16>(ram, *in_ram, file, (h, w_), y, rows, src),
                false => write_host::<f32>(ram, *in_ram, file, (h, w_), y, rows, src),
            })?,
        }
        Ok(())
    }

    /// Rows `rows` of every channel as (1, C, rows, W), on the pass's device and dtype.
    pub fn read_rows(&self, rows: Range<usize>) -> Result<Tensor> {
        let stored = self.read_stored(rows)?;
        stored
            .to_device(&self.scratch.device)?
            .to_dtype(self.scratch.dtype)
    }

    fn read_stored(&self, rows: Range<usize>) -> Result<Tensor> {
        let (n, w, c) = (rows.len(), self.w, self.c);
        match &self.place {
            Place::Bands(bands) => {
                let parts = bands
                    .iter()
                    .filter_map(|(y, t)| {
                        let (a, b) = (rows.start.max(*y), rows.end.min(y + t.dim(2).ok()?));
                        (a < b).then(|| t.narrow(2, a - y, b - a))
                    })
                    .collect::<Result<Vec<_>>>()?;
                Tensor::cat(&parts, 2)
            }
            Place::Host { ram, in_ram, file } => {
                // `read_host` fills every plane from RAM or the file, or fails.
                let mut out = crate::kernels::unfilled::<f32>(c * n * w);
                let at = (self.h, w);
                match self.bf16 {
                    true => read_host::<u16>(ram, *in_ram, file, at, rows, &mut out)?,
                    false => read_host::<f32>(ram, *in_ram, file, at, rows, &mut out)?,
                }
                Tensor::from_vec(out, (1, c, n, w), &host())
            }
        }
    }
}
