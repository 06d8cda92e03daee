//! tessera's own CPU kernels for the f32 work of the UNet and the VAE, where candle 0.11's CPU
//! ops are the bottleneck (profiled on SD 1.5, one CFG step at 512², 2-core Xeon: 44% in
//! candle's AVX2 gemm behind a per-call im2col and kernel re-layout, 13% in its strided
//! copies and element-wise closures, 9% in scalar `expf`, 10% zeroing fresh pages).
//!
//! - [`gemm`]: the one matrix product, the `gemm` crate's micro-kernels (AVX-512 where the CPU
//!   has it, chosen at run time; AVX2+FMA otherwise) on strided views, no copies.
//! - [`conv`]: convolution as blocked im2col into a reused buffer + gemm, with the weights used
//!   in their stored layout; the input side applies GroupNorm and SiLU and reads nearest-2x
//!   upsampling and skip concatenation by index, the output side starts from the bias, a
//!   per-channel term and a residual.
//! - [`norm`]: GroupNorm / LayerNorm statistics (f64 sums) as per-channel scale and shift.
//! - [`math`]: vectorised exp, SiLU, GELU (erf), softmax rows.
//! - [`direct`], [`winograd`]: stride-1 convolutions without im2col, and 3x3 ones with 2.25x
//!   fewer multiply-adds, in register tiles.
//! - [`flash`]: attention without score matrices (online softmax over key chunks in cache,
//!   register tiles); [`attention`] (query blocks over gemm) where neither AVX2 nor AVX-512 is.
//! - `simd`: the tiles' vectors of 16, one AVX-512 register or two AVX2 ones, so each tile is
//!   written once for both; [`isa`] picks (`TESSERA_ISA=avx2` runs the AVX2 path on a wider
//!   CPU).
//! - [`bf16`], [`direct::conv2d_bf16`], [`flash_bf16`]: the bf16 compute path where the CPU has
//!   AVX512_BF16 (bf16 products, f32 sums; weights packed once when a layer is built).
//!
//! Every kernel is used only on host f32 tensors (whose values the bf16 kernels round as they
//! lay them out); anything else takes candle's path.

pub mod attention;
pub mod bench;
pub mod bf16;
pub mod conv;
pub mod direct;
pub mod flash;
pub mod flash_bf16;
pub mod gemm;
pub mod math;
pub mod norm;
pub(crate) mod online_softmax;
pub mod operand;
#[cfg(target_arch = "x86_64")]
mod simd;
pub mod winograd;

use candle_core::{CpuStorage, DType, Layout, Result, Shape, Storage, Tensor};

/// Whether `t` can go through the kernels: f32, contiguous, on the host.
pub fn usable(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous() && enabled()
}

/// `TESSERA_KERNELS=off` sends everything through candle's ops, the path GPUs take, so the
/// CPU test suite checks that path too.
pub fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("TESSERA_KERNELS").map_or(true, |v| v != "off"))
}

/// Read a contiguous host f32 tensor's values.
pub fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let (storage, layout): (_, &Layout) = t.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) => Ok(f(&v[a..b])),
        _ => candle_core::bail!("kernels take contiguous f32 host tensors"),
    }
}

/// A new host tensor of `shape` whose values `fill` writes, every one of them.
pub fn new_f32(shape: impl Into<Shape>, fill: impl FnOnce(&mut [f32])) -> Result<Tensor> {
    let shape = shape.into();
    let n = shape.elem_count();
    let mut v = unfilled(n);
    fill(&mut v);
    Tensor::from_vec(v, shape, &candle_core::Device::Cpu)
}

/// `(b, r, c)` -> `(b, c, r)`, contiguous. Host f32 tensors are transposed in 16 x 16 blocks
/// over all threads (candle's strided copy is serial: it was a sixth of a UNet step's serial
/// time, turning the transformer's activations into tokens and back); others by candle.
pub fn transpose12(t: &Tensor) -> Result<Tensor> {
    use rayon::prelude::*;
    const B: usize = 16;
    if !usable(t) || t.elem_count() == 0 {
        return t.transpose(1, 2)?.contiguous();
    }
    let (b, r, c) = t.dims3()?;
    with_f32(t, |src| {
        new_f32((b, c, r), |out| {
            // One task per batch item and block of B output rows (B input columns).
            out.par_chunks_mut(c * r)
                .zip(src.par_chunks(r * c))
                .for_each(|(dst, src)| {
                    dst.par_chunks_mut(B * r)
                        .enumerate()
                        .for_each(|(blk, dst)| {
                            let (c0, cols) = (blk * B, dst.len() / r.max(1));
                            for r0 in (0..r).step_by(B) {
                                for y in r0..(r0 + B).min(r) {
                                    for x in 0..cols {
                                        dst[x * r + y] = src[y * c + c0 + x];
                                    }
                                }
                            }
                        })
                })
        })
    })?
}

/// `w` in `dtype`: itself when it already is. On the CPU the UNet keeps f16/bf16 weights (half
/// the memory and the streamed bytes) and computes in f32: those are widened here, per use, in
/// parallel (`half`'s slice conversion, F16C where the CPU has it).
pub fn in_dtype(w: &Tensor, dtype: DType) -> Result<Tensor> {
    use half::slice::HalfFloatSliceExt;
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 16;
    let narrow = matches!(w.dtype(), DType::F16 | DType::BF16);
    if w.dtype() == dtype || !(w.device().is_cpu() && dtype == DType::F32 && narrow) {
        return w.to_dtype(dtype);
    }
    let w = w.contiguous()?;
    let (storage, layout) = w.storage_and_layout();
    let Some((a, b)) = layout.contiguous_offsets() else {
        candle_core::bail!("a contiguous tensor has contiguous offsets")
    };
    new_f32(w.shape().clone(), |out| match &*storage {
        Storage::Cpu(CpuStorage::F16(v)) => out
            .par_chunks_mut(CHUNK)
            .zip(v[a..b].par_chunks(CHUNK))
            .for_each(|(o, s)| s.convert_to_f32_slice(o)),
        Storage::Cpu(CpuStorage::BF16(v)) => out
            .par_chunks_mut(CHUNK)
            .zip(v[a..b].par_chunks(CHUNK))
            .for_each(|(o, s)| s.convert_to_f32_slice(o)),
        _ => unreachable!("checked: a host f16 or bf16 tensor"),
    })
}

/// A buffer of `n` values that its caller writes in full before reading: fresh pages are not
/// zeroed first (zeroing was 10% of a UNet step).
#[allow(clippy::uninit_vec)]
pub(crate) fn unfilled<T: Plain>(n: usize) -> Vec<T> {
    let mut v: Vec<T> = Vec::with_capacity(n);
    huge_pages(&v);
    // SAFETY: `Plain` types have no invalid bit patterns; every caller writes each element
    // before use.
    unsafe { v.set_len(n) };
    v
}

/// Ask for a large buffer's fresh pages as transparent huge pages where the system leaves that
/// to each program (`madvise` mode): glibc maps every allocation over 32 MiB anew, so each band
/// of a 2K tiled decode took a fault per 4 KiB (1024² decode: 8.8 M faults, 24 s of system
/// time in 52 s).
fn huge_pages<T>(v: &Vec<T>) {
    const LARGE: usize = 4 << 20;
    let bytes = v.capacity() * std::mem::size_of::<T>();
    #[cfg(target_os = "linux")]
    if bytes >= LARGE {
        let page = 4096;
        let start = (v.as_ptr() as usize).next_multiple_of(page);
        let end = (v.as_ptr() as usize + bytes) / page * page;
        // SAFETY: advice on pages of this allocation only; it changes no contents.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (bytes, LARGE);
}

/// Values every bit pattern of which is valid: f32 and the bf16 kernels' u32 pairs.
pub(crate) trait Plain: Copy {}
impl Plain for f32 {}
impl Plain for u32 {}

/// A pointer into an output buffer shared by parallel tasks that write disjoint parts of it.
#[derive(Clone, Copy)]
pub(crate) struct SharedOut(*mut f32);
// SAFETY: every user hands each task a part of the buffer no other task writes.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    pub(crate) fn new(buf: &mut [f32]) -> Self {
        Self(buf.as_mut_ptr())
    }

    /// The pointer (a method, so closures capture the whole `Send` wrapper).
    pub(crate) fn ptr(self) -> *mut f32 {
        self.0
    }
}

/// The instruction sets the kernels dispatch on, widest last.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    Portable,
    /// AVX2 with FMA (most laptops' CPUs).
    Avx2,
    Avx512,
}

/// The widest instruction set this CPU has, capped by `TESSERA_ISA=avx2|portable` (never
/// raised), so the narrower paths can be run and measured on a wider CPU.
pub fn isa() -> Isa {
    let isa = cpu_isa();
    #[cfg(test)]
    let isa = isa.min(tests::cap());
    isa
}

/// [`isa`] without the unit tests' cap: for choices made once per process.
pub(crate) fn cpu_isa() -> Isa {
    static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *ISA.get_or_init(|| {
        let cap = match std::env::var("TESSERA_ISA").as_deref() {
            Ok("avx2") => Isa::Avx2,
            Ok("portable") => Isa::Portable,
            _ => Isa::Avx512,
        };
        detected().min(cap)
    })
}

fn detected() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return Isa::Avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Isa::Avx2;
        }
    }
    Isa::Portable
}

/// [`isa`] by name, for reports.
pub fn cpu_path() -> &'static str {
    match isa() {
        Isa::Avx512 => "avx512f",
        Isa::Avx2 => "avx2+fma",
        Isa::Portable => "portable",
    }
}

/// Seeded values in [-1, 1) for the kernels' tests.
#[cfg(test)]
pub(crate) fn test_values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
        .collect()
}

/// Threads the kernels split work over (rayon's pool).
pub fn threads() -> usize {
    rayon::current_num_threads()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::Isa;
    use candle_core::{Device, Tensor};
    use std::sync::atomic::{AtomicU8, Ordering};

    /// The cap [`super::isa`] takes in unit tests (the widest: none).
    static CAP: AtomicU8 = AtomicU8::new(Isa::Avx512 as u8);

    pub(crate) fn cap() -> Isa {
        match CAP.load(Ordering::Relaxed) {
            0 => Isa::Portable,
            1 => Isa::Avx2,
            _ => Isa::Avx512,
        }
    }

    /// `softmax(scale · q kᵀ) v` per (batch, head) in f64, the definition, for rows
    /// `(B, N, heads·d)` as [`super::attention::attention`] takes them.
    pub(crate) fn reference_attention(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        s: super::attention::Shape,
        scale: f32,
    ) -> Vec<f64> {
        let c = s.heads * s.d;
        let mut out = vec![0f64; s.batch * s.n * c];
        for (b, h) in (0..s.batch).flat_map(|b| (0..s.heads).map(move |h| (b, h))) {
            let row = |j: usize, len: usize| (b * len + j) * c + h * s.d;
            for i in 0..s.n {
                let logits: Vec<f64> = (0..s.m)
                    .map(|j| {
                        let (qi, kj) = (row(i, s.n), row(j, s.m));
                        let dot: f64 = (0..s.d).map(|t| q[qi + t] as f64 * k[kj + t] as f64).sum();
                        scale as f64 * dot
                    })
                    .collect();
                let max = logits.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
                let z: f64 = e.iter().sum();
                for t in 0..s.d {
                    out[row(i, s.n) + t] =
                        (0..s.m).map(|j| e[j] / z * v[row(j, s.m) + t] as f64).sum();
                }
            }
        }
        out
    }

    /// The largest difference of `got` from `want`; infinite where `got` holds a NaN.
    pub(crate) fn worst_error(got: &[f32], want: &[f64]) -> f64 {
        got.iter()
            .zip(want)
            .map(|(&g, &w)| match g.is_nan() {
                true => f64::INFINITY,
                false => (g as f64 - w).abs(),
            })
            .fold(0f64, f64::max)
    }

    /// The input a convolution reads from `sources` (channel planes of `h x w`) with the
    /// pre-op `x · scale + shift`, SiLU, nearest 2x upsampling and `crop` rows off the
    /// upsampled top and bottom, built by hand: `(channels, 2h - crop, 2w)`.
    pub(crate) fn upsampled_by_hand(
        sources: &[&[f32]],
        (h, w): (usize, usize),
        (scale, shift): (&[f32], &[f32]),
        crop: (usize, usize),
    ) -> Vec<f32> {
        let planes = sources.iter().flat_map(|s| s.chunks(h * w));
        let mut x = Vec::new();
        for (c, plane) in planes.enumerate() {
            for y in crop.0..2 * h - crop.1 {
                for xx in 0..2 * w {
                    let v = plane[(y / 2) * w + xx / 2] * scale[c] + shift[c];
                    x.push(v / (1.0 + (-v).exp()));
                }
            }
        }
        x
    }

    /// Run `f` once per vector instruction set this CPU has (AVX2, then AVX-512), the kernels
    /// capped to it, so one test run checks every path. Tests running beside it meanwhile
    /// take the narrower path too: every path gives their results.
    pub(crate) fn each_isa(f: impl Fn(Isa)) {
        static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        struct Uncap;
        impl Drop for Uncap {
            fn drop(&mut self) {
                CAP.store(Isa::Avx512 as u8, Ordering::Relaxed);
            }
        }
        let _uncap = Uncap;
        let isas = [Isa::Avx2, Isa::Avx512];
        let here: Vec<Isa> = isas
            .into_iter()
            .filter(|&i| i <= super::cpu_isa())
            .collect();
        if here.is_empty() {
            eprintln!("no AVX2 on this CPU: the vector kernels are not run");
        }
        for isa in here {
            CAP.store(isa as u8, Ordering::Relaxed);
            f(isa);
        }
    }

    /// Blocks that do not divide the sides, several batch items: candle's transpose exactly.
    #[test]
    fn transpose12_equals_candles() {
        for (b, r, c) in [(2, 37, 21), (1, 16, 320), (3, 5, 1), (2, 100, 33)] {
            let n = b * r * c;
            let t = Tensor::arange(0f32, n as f32, &Device::Cpu)
                .unwrap()
                .reshape((b, r, c))
                .unwrap();
            let want: Vec<f32> = t
                .transpose(1, 2)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let got = super::transpose12(&t).unwrap();
            assert_eq!(got.dims(), &[b, c, r]);
            assert_eq!(got.flatten_all().unwrap().to_vec1::<f32>().unwrap(), want);
        }
    }
}
