//! bf16 matrix work with f32 accumulation, for CPUs with AVX512_BF16 (`vdpbf16ps`: 16 lanes,
//! each adding the dot product of a pair of bf16 values to an f32). Operands are laid out as
//! *pairs* along the reduction dimension, packed in a `u32` (low half first): input channels
//! for a convolution, input features for a linear layer. Weights are packed once, when a layer
//! is built from bf16 weights (the same bytes as the bf16 tensor they replace); activations
//! stay f32 between layers (norms, softmax and residuals in f32) and are rounded to bf16
//! (nearest, ties to even) as a kernel lays out its input.
//!
//! One register tile serves both users: `R` rows x `V` vectors of 16 columns, each step a
//! broadcast pair per row against a vector of 16 pairs per column block.

use super::SharedOut;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use half::bf16;
use rayon::prelude::*;

/// Columns of a packed linear weight's panel: the tile's width.
pub const PANEL: usize = 64;
/// Rows of a tile.
pub const ROWS: usize = 6;

/// Whether this CPU runs the bf16 kernels (and the kernels are on; `TESSERA_NO_BF16` turns
/// them off, so a bf16 render computes in f32 from its bf16 weights as on other CPUs).
pub fn available() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            super::enabled()
                && std::env::var_os("TESSERA_NO_BF16").is_none()
                && super::cpu_isa() == super::Isa::Avx512
                && std::arch::is_x86_feature_detected!("avx512bf16")
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    })
}

/// Two values as one pair: `lo` in the low half.
#[inline]
pub fn pair(lo: f32, hi: f32) -> u32 {
    u32::from(bf16::from_f32(lo).to_bits()) | (u32::from(bf16::from_f32(hi).to_bits()) << 16)
}

fn pair_bits(lo: bf16, hi: bf16) -> u32 {
    u32::from(lo.to_bits()) | (u32::from(hi.to_bits()) << 16)
}

/// Convolution weights `(cout, cin, k, k)` as `(cout, k·k, cin/2)` pairs of input channels
/// (an odd last channel paired with zero).
pub fn pack_conv(w: &[bf16], cout: usize, cin: usize, kk: usize) -> Vec<u32> {
    let cin2 = cin.div_ceil(2);
    let mut out = vec![0u32; cout * kk * cin2];
    out.par_chunks_mut(kk * cin2)
        .enumerate()
        .for_each(|(oc, dst)| {
            let w = &w[oc * cin * kk..][..cin * kk];
            for (tap, row) in dst.chunks_mut(cin2).enumerate() {
                for (p, o) in row.iter_mut().enumerate() {
                    let hi = match 2 * p + 1 < cin {
                        true => w[(2 * p + 1) * kk + tap],
                        false => bf16::ZERO,
                    };
                    *o = pair_bits(w[2 * p * kk + tap], hi);
                }
            }
        });
    out
}

/// Linear weights `(cout, cin)` as panels of [`PANEL`] output features, each `(cin/2, PANEL)`
/// pairs of input features; columns past `cout` are zero.
pub fn pack_linear(w: &[bf16], cout: usize, cin: usize) -> Vec<u32> {
    let cin2 = cin.div_ceil(2);
    let mut out = vec![0u32; cout.div_ceil(PANEL) * cin2 * PANEL];
    out.par_chunks_mut(cin2 * PANEL)
        .enumerate()
        .for_each(|(panel, dst)| {
            for (p, row) in dst.chunks_mut(PANEL).enumerate() {
                for (c, o) in row.iter_mut().enumerate() {
                    let n = panel * PANEL + c;
                    if n < cout {
                        let hi = match 2 * p + 1 < cin {
                            true => w[n * cin + 2 * p + 1],
                            false => bf16::ZERO,
                        };
                        *o = pair_bits(w[n * cin + 2 * p], hi);
                    }
                }
            }
        });
    out
}

/// The values of pairs (for the paths that need the weight back as a tensor).
pub fn unpack(pairs: u32) -> (bf16, bf16) {
    (
        bf16::from_bits(pairs as u16),
        bf16::from_bits((pairs >> 16) as u16),
    )
}

/// One register tile: `dst[j·ld + c] (+)= Σ_taps Σ_s a_j · b` for rows `j < rows`, columns
/// `c < cols`, where the pair `a_j` is at `a[j] + tap.0 + s·a_step` and the 16 pairs of
/// column block `i` at `b + tap.1 + s·b_step + 16i`.
pub struct Tile<'a, const R: usize> {
    pub a: [*const u32; R],
    pub a_step: usize,
    pub b: *const u32,
    pub b_step: usize,
    pub steps: usize,
    pub taps: &'a [(usize, usize)],
    pub dst: *mut f32,
    pub ld: usize,
    pub rows: usize,
    pub cols: usize,
    /// Add to what `dst` holds (else overwrite it).
    pub add: bool,
}

impl<const R: usize> Tile<'_, R> {
    /// # Safety
    /// [`available`] is true; every pointer read (rows `a` for all `rows` up to `R`, which
    /// the caller points at valid data, and `V` whole vectors of `b`) is in bounds, and
    /// nothing else writes the tile's part of `dst`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn run<const V: usize>(&self) {
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        for &(a_off, b_off) in self.taps {
            let b = self.b.add(b_off);
            let a: [*const u32; R] = std::array::from_fn(|j| self.a[j].add(a_off));
            for s in 0..self.steps {
                let bs = b.add(s * self.b_step);
                let v: [__m512bh; V] = std::array::from_fn(|i| {
                    std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(
                        bs.add(16 * i) as *const _
                    ))
                });
                for (acc, a) in acc.iter_mut().zip(a) {
                    let w = _mm512_set1_epi32(*a.add(s * self.a_step) as i32);
                    let w = std::mem::transmute::<__m512i, __m512bh>(w);
                    for (acc, v) in acc.iter_mut().zip(v) {
                        *acc = _mm512_dpbf16_ps(*acc, v, w);
                    }
                }
            }
        }
        for (j, row) in acc.iter().enumerate().take(self.rows) {
            for (i, acc) in row.iter().enumerate() {
                let c = 16 * i;
                if c >= self.cols {
                    break;
                }
                let n = 16.min(self.cols - c);
                let mask: __mmask16 = if n == 16 { 0xffff } else { (1u16 << n) - 1 };
                let at = self.dst.add(j * self.ld + c);
                let sum = match self.add {
                    true => _mm512_add_ps(_mm512_maskz_loadu_ps(mask, at), *acc),
                    false => *acc,
                };
                _mm512_mask_storeu_ps(at, mask, sum);
            }
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    pub unsafe fn run<const V: usize>(&self) {
        unreachable!("the bf16 kernels run only where `available` says so")
    }
}

/// `out (rows x cout) += x (rows x cin) · Wᵀ`, `w` packed by [`pack_linear`]; `out` holds the
/// bias and any residual already.
pub fn linear(x: &[f32], rows: usize, cin: usize, w: &[u32], cout: usize, out: &mut [f32]) {
    const BLOCK: usize = 8 * ROWS;
    let cin2 = cin.div_ceil(2);
    // `pairs_of` writes every element.
    let mut xa = super::unfilled::<u32>(rows * cin2);
    xa.par_chunks_mut(cin2)
        .zip(x.par_chunks(cin))
        .with_min_len(16)
        .for_each(|(dst, src)| pairs_of(src, dst));
    let panels = cout.div_ceil(PANEL);
    let blocks = rows.div_ceil(BLOCK);
    let want = 4 * rayon::current_num_threads();
    let groups = want.div_ceil(blocks).clamp(1, panels);
    let per_group = panels.div_ceil(groups);
    let out = SharedOut::new(out);
    (0..blocks * groups).into_par_iter().for_each(|task| {
        let (block, group) = (task / groups, task % groups);
        for panel in group * per_group..((group + 1) * per_group).min(panels) {
            let b = w[panel * cin2 * PANEL..].as_ptr();
            for r0 in (block * BLOCK..((block + 1) * BLOCK).min(rows)).step_by(ROWS) {
                let n = ROWS.min(rows - r0);
                let a =
                    std::array::from_fn(|j| xa[(r0 + if j < n { j } else { 0 }) * cin2..].as_ptr());
                let tile = Tile::<ROWS> {
                    a,
                    a_step: 1,
                    b,
                    b_step: PANEL,
                    steps: cin2,
                    taps: &[(0, 0)],
                    // SAFETY: row r0, column panel·PANEL of out (rows x cout).
                    dst: unsafe { out.ptr().add(r0 * cout + panel * PANEL) },
                    ld: cout,
                    rows: n,
                    cols: PANEL.min(cout - panel * PANEL),
                    add: true,
                };
                // SAFETY: the caller checked `available`; panels are whole (zero columns past
                // cout), rows past n read row r0; this task alone writes these rows x columns.
                unsafe { tile.run::<4>() };
            }
        }
    });
}

/// `src` rounded to bf16 bits (nearest, ties to even), 16 at a time where the CPU can.
pub fn round_into(src: &[f32], dst: &mut [u16]) {
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: checked AVX512_BF16; the vector loop stays within both slices.
        return unsafe { round_into_avx512(src, dst) };
    }
    dst.iter_mut()
        .zip(src)
        .for_each(|(d, &s)| *d = bf16::from_f32(s).to_bits());
}

/// A row of values as pairs of neighbours `(src[2i], src[2i + 1])` into `dst`
/// (`src.len()` halved, rounded up; an odd last value paired with zero).
pub fn pairs_of(src: &[f32], dst: &mut [u32]) {
    let (even, odd) = src.split_at(src.len() / 2 * 2);
    // Pairs of neighbours are the values in memory order, two to a u32.
    // SAFETY: the u32s hold even.len() u16s and more; u16 has no invalid values.
    let halves =
        unsafe { std::slice::from_raw_parts_mut(dst.as_mut_ptr() as *mut u16, even.len()) };
    round_into(even, halves);
    if let [last] = odd {
        dst[even.len() / 2] = pair(*last, 0.0);
    }
}

/// Two rows of values as pairs `(lo[x], hi[x])` (an absent `hi` is zero).
pub fn pair_rows(lo: &[f32], hi: Option<&[f32]>, dst: &mut [u32]) {
    let n = dst.len();
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: checked AVX512_BF16; the vector loop stays within the slices.
        return unsafe { pair_rows_avx512(&lo[..n], hi.map(|h| &h[..n]), dst) };
    }
    for (x, d) in dst.iter_mut().enumerate() {
        *d = pair(lo[x], hi.map_or(0.0, |h| h[x]));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn round_into_avx512(src: &[f32], dst: &mut [u16]) {
    let n = src.len().min(dst.len());
    let whole = n / 16 * 16;
    for x in (0..whole).step_by(16) {
        let v = _mm512_cvtneps_pbh(_mm512_loadu_ps(src.as_ptr().add(x)));
        _mm256_storeu_si256(
            dst.as_mut_ptr().add(x) as *mut __m256i,
            std::mem::transmute::<__m256bh, __m256i>(v),
        );
    }
    for x in whole..n {
        dst[x] = bf16::from_f32(src[x]).to_bits();
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn pair_rows_avx512(lo: &[f32], hi: Option<&[f32]>, dst: &mut [u32]) {
    let n = dst.len();
    let whole = n / 16 * 16;
    let wide = |v: &[f32], x: usize| {
        let h = _mm512_cvtneps_pbh(_mm512_loadu_ps(v.as_ptr().add(x)));
        _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(h))
    };
    for x in (0..whole).step_by(16) {
        let mut v = wide(lo, x);
        if let Some(hi) = hi {
            v = _mm512_or_si512(v, _mm512_slli_epi32(wide(hi, x), 16));
        }
        _mm512_storeu_si512(dst.as_mut_ptr().add(x) as *mut _, v);
    }
    for (x, d) in dst.iter_mut().enumerate().skip(whole) {
        *d = pair(lo[x], hi.map_or(0.0, |h| h[x]));
    }
}

/// The weights [`pack_conv`] packed, back in `(cout, cin, k, k)` order.
pub fn unpack_conv(pairs: &[u32], cout: usize, cin: usize, kk: usize) -> Vec<bf16> {
    let cin2 = cin.div_ceil(2);
    let mut w = vec![bf16::ZERO; cout * cin * kk];
    for (i, v) in w.iter_mut().enumerate() {
        let (oc, c, tap) = (i / (cin * kk), i / kk % cin, i % kk);
        let (lo, hi) = unpack(pairs[(oc * kk + tap) * cin2 + c / 2]);
        *v = if c % 2 == 0 { lo } else { hi };
    }
    w
}

/// The weights [`pack_linear`] packed, back in `(cout, cin)` order.
pub fn unpack_linear(pairs: &[u32], cout: usize, cin: usize) -> Vec<bf16> {
    let cin2 = cin.div_ceil(2);
    let mut w = vec![bf16::ZERO; cout * cin];
    for (i, v) in w.iter_mut().enumerate() {
        let (n, c) = (i / cin, i % cin);
        let (lo, hi) = unpack(pairs[(n / PANEL * cin2 + c / 2) * PANEL + n % PANEL]);
        *v = if c % 2 == 0 { lo } else { hi };
    }
    w
}

/// `f` of the values of a host bf16 tensor, or `None` for any other tensor.
pub fn with_host_values<R>(t: &candle_core::Tensor, f: impl FnOnce(&[bf16]) -> R) -> Option<R> {
    use candle_core::{CpuStorage, Storage};
    let t = t.contiguous().ok()?;
    let (storage, layout) = t.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::BF16(v)), Some((a, b))) => Some(f(&v[a..b])),
        _ => None,
    }
}

#[cfg(test)]
#[path = "bf16_tests.rs"]
mod tests;
