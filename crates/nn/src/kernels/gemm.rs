//! The one matrix product of the kernels: `dst = alpha * dst + beta * lhs · rhs` on strided
//! f32 views, over the `gemm` crate's micro-kernels and rayon's threads.

use gemm::Parallelism;

/// A strided matrix view: element (i, j) at `ptr + i * rs + j * cs`.
#[derive(Clone, Copy)]
pub struct View {
    pub ptr: *const f32,
    pub rs: isize,
    pub cs: isize,
}

impl View {
    /// Row-major with row stride `ld`.
    pub fn rows(s: &[f32], ld: usize) -> Self {
        Self {
            ptr: s.as_ptr(),
            rs: ld as isize,
            cs: 1,
        }
    }

    /// The transpose of a row-major matrix with row stride `ld` (column-major read).
    pub fn transposed(s: &[f32], ld: usize) -> Self {
        Self {
            ptr: s.as_ptr(),
            rs: 1,
            cs: ld as isize,
        }
    }
}

/// `dst (m x n, row stride ldd) = [dst +] scale * lhs (m x k) · rhs (k x n)` over all of
/// rayon's threads; `accumulate` keeps what `dst` holds.
///
/// # Safety
/// The views must cover `m x k`, `k x n` and `m x n` valid elements, and `dst` must not alias
/// either input.
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    ldd: usize,
    accumulate: bool,
    lhs: View,
    rhs: View,
    scale: f32,
) {
    let parallelism = match rayon::current_num_threads() {
        1 => Parallelism::None,
        t => Parallelism::Rayon(t),
    };
    product(m, n, k, dst, ldd, accumulate, lhs, rhs, scale, parallelism)
}

/// [`sgemm`] on the calling thread only (for work already split across threads).
///
/// # Safety
/// As [`sgemm`].
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm_serial(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    ldd: usize,
    accumulate: bool,
    lhs: View,
    rhs: View,
    scale: f32,
) {
    product(
        m,
        n,
        k,
        dst,
        ldd,
        accumulate,
        lhs,
        rhs,
        scale,
        Parallelism::None,
    )
}

#[allow(clippy::too_many_arguments)]
unsafe fn product(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    ldd: usize,
    accumulate: bool,
    lhs: View,
    rhs: View,
    scale: f32,
    parallelism: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        ldd as isize,
        accumulate,
        lhs.ptr,
        lhs.cs,
        lhs.rs,
        rhs.ptr,
        rhs.cs,
        rhs.rs,
        1.0,
        scale,
        false,
        false,
        false,
        parallelism,
    );
}

/// The micro-kernels the `gemm` crate runs here: it detects the CPU itself (`TESSERA_ISA`
/// does not reach it), and has AVX-512 ones only in a build with the `avx512-gemm` feature.
pub fn path() -> &'static str {
    match super::detected() {
        super::Isa::Avx512 if cfg!(feature = "avx512-gemm") => "avx512",
        super::Isa::Avx512 | super::Isa::Avx2 => "avx2+fma",
        super::Isa::Portable => "portable",
    }
}
