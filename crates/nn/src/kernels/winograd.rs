//! Winograd F(2x2, 3x3) for stride-1 3x3 convolutions on CPUs with AVX-512: each 2x2 block of
//! output is made from a 4x4 patch of input with 16 products per channel pair instead of 36, so
//! the multiply-adds drop 2.25x. The 16 products are 16 independent 1x1 convolutions over the
//! transformed input, run by the direct kernel's register tile; the transforms are additions.
//!
//! A task takes one row of 2x2 blocks and a chunk of 64 blocks along it: it transforms that
//! patch of the laid-out input (the direct kernel's layout: zero padding, the pre-op,
//! upsampling and concatenation already resolved) into `V` (16 x cin x 64, in L2 per product),
//! multiplies by the transformed weights `U` (16 x cout x cin, made once per call from the
//! weights as stored: 16/9 of a layer's weights, transient) into `M`, and transforms `M` back
//! into 2 output rows, adding bias, per-channel term and residual as it stores them.
//!
//! Exact up to f32 rounding (the transforms add and halve; no constant beyond 1/2): the SD 1.5
//! VAE decode stays within its parity bound. Why own code: see BENCHMARKS.md ("Winograd"):
//! the VAE's 3x3 shapes in `tessera bench kernels` against the direct kernel.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::direct::{lay_out, Tile};
use super::operand::{Geometry, Init, Input};
use super::SharedOut;
use rayon::prelude::*;
use std::cell::RefCell;

/// The most blocks of 2x2 output a task takes along a row (4 vectors of 16, the direct tile's
/// width); narrower images take 1-3 vectors.
const CHUNK: usize = 64;

/// Whether this convolution goes through Winograd on this CPU: 3x3, stride 1, wide enough to
/// fill the tile's vectors with blocks, channels enough to amortise the transforms.
/// `TESSERA_NO_WINOGRAD` turns it off.
pub fn applies(g: &Geometry, wo: usize, cin: usize, cout: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        g.k == 3
            && g.stride == 1
            && wo >= MIN_WIDTH
            && cin >= 32
            && cout >= 32
            && enabled()
            && std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (g, wo, cin, cout);
        false
    }
}

/// Output columns from which Winograd pays (`tessera bench kernels`).
const MIN_WIDTH: usize = 64;

fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("TESSERA_NO_WINOGRAD").is_none())
}

/// `G g Gᵀ` of every 3x3 kernel of `weight` (`[cout, cin, 3, 3]`), as `(16, cout, cin)`.
fn transform_weights(weight: &[f32], cout: usize, cin: usize) -> Vec<f32> {
    let mut u = super::unfilled::<f32>(16 * cout * cin);
    let plane = cout * cin;
    let out = SharedOut::new(&mut u);
    (0..cout).into_par_iter().for_each(|co| {
        for ci in 0..cin {
            let g = &weight[(co * cin + ci) * 9..][..9];
            // G g: rows g0, (g0+g1+g2)/2, (g0-g1+g2)/2, g2 of the kernel's rows.
            let gg: [[f32; 3]; 4] = std::array::from_fn(|r| {
                std::array::from_fn(|c| {
                    let (a, b, d) = (g[c], g[3 + c], g[6 + c]);
                    match r {
                        0 => a,
                        1 => (a + b + d) * 0.5,
                        2 => (a - b + d) * 0.5,
                        _ => d,
                    }
                })
            });
            for (r, [a, b, d]) in gg.into_iter().enumerate() {
                let row = [a, (a + b + d) * 0.5, (a - b + d) * 0.5, d];
                for (c, v) in row.into_iter().enumerate() {
                    // SAFETY: product 4r+c, channel pair (co, ci): this task alone writes
                    // output channel co.
                    unsafe { *out.ptr().add((4 * r + c) * plane + co * cin + ci) = v };
                }
            }
        }
    });
    u
}

thread_local! {
    /// A task's transformed input and products, kept per thread between tasks and calls (at
    /// most 2 MiB each: 16 products x 512 channels x 64 blocks).
    static BUFFERS: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Convolve one batch item (see [`applies`]); `out` is `(cout, ho, wo)`.
pub fn conv2d(
    input: &Input,
    weight: &[f32],
    cout: usize,
    g: Geometry,
    init: Init,
    out: &mut [f32],
) {
    let cin = input.channels();
    let (ho, wo) = g.out_dims(input.dims());
    let (rows, blocks) = (ho.div_ceil(2), wo.div_ceil(2));
    let chunk = (blocks.div_ceil(16) * 16).min(CHUNK);
    let chunks = blocks.div_ceil(chunk);
    // Every block of every chunk reads a 4x4 patch: rows 2*rows+2, columns 2*chunks*chunk+2.
    let (hp, wp) = (2 * rows + 2, 2 * chunks * chunk + 2);
    // `lay_out` writes every element.
    let mut padded = super::unfilled::<f32>(cin * hp * wp);
    lay_out(input, &g, wp, &mut padded);
    let u = transform_weights(weight, cout, cin);
    let shape = Shape {
        cin,
        cout,
        wp,
        ho,
        wo,
        chunk,
    };
    let out_ptr = SharedOut::new(out);
    (0..rows * chunks).into_par_iter().for_each(|task| {
        let row = task / chunks;
        BUFFERS.with(|b| {
            let (v, m) = &mut *b.borrow_mut();
            v.resize(16 * cin * shape.chunk, 0.0);
            m.resize(16 * cout * shape.chunk, 0.0);
            let b0 = (task % chunks) * shape.chunk;
            // SAFETY: AVX-512F was checked by `applies`; the patch read lies within the padded
            // layout (hp x wp); the task writes output rows 2*row, 2*row+1 (those below ho
            // left out), columns 2*b0 .. 2*(b0+chunk) (those past wo left out), which no other
            // task writes.
            unsafe {
                shape.input_transform(&padded[2 * row * cin * wp + 2 * b0..], v);
                for p in 0..16 {
                    let v = &v[p * cin * shape.chunk..];
                    shape.product(&u[p * cout * cin..][..cout * cin], v, m, p);
                }
                shape.output_transform(m, init, 2 * row, 2 * b0, out_ptr.ptr());
            }
        });
    });
}

struct Shape {
    cin: usize,
    cout: usize,
    wp: usize,
    ho: usize,
    wo: usize,
    /// Blocks per task, a multiple of 16 up to [`CHUNK`].
    chunk: usize,
}

#[cfg(target_arch = "x86_64")]
impl Shape {
    /// `Bᵀ d B` of the 64 blocks' 4x4 patches starting at `src` (row 0 of the patches, column
    /// 0 of the first block, in the `(hp, cin, wp)` layout), into `v` as `(16, cin, chunk)`.
    #[target_feature(enable = "avx512f")]
    unsafe fn input_transform(&self, src: &[f32], v: &mut [f32]) {
        let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        let row_pitch = self.cin * self.wp;
        let (s, dst) = (src.as_ptr(), v.as_mut_ptr());
        for ci in 0..self.cin {
            for q in 0..self.chunk / 16 {
                // d[i][j]: patch row i, column j, of 16 blocks (their columns 2 apart).
                let d: [[__m512; 4]; 4] = std::array::from_fn(|i| {
                    let p = s.add(i * row_pitch + ci * self.wp + 32 * q);
                    let (a, b) = (_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16)));
                    let (c, e) = (_mm512_loadu_ps(p.add(2)), _mm512_loadu_ps(p.add(18)));
                    [
                        _mm512_permutex2var_ps(a, even, b),
                        _mm512_permutex2var_ps(a, odd, b),
                        _mm512_permutex2var_ps(c, even, e),
                        _mm512_permutex2var_ps(c, odd, e),
                    ]
                });
                let t: [[__m512; 4]; 4] =
                    std::array::from_fn(|j| bt(std::array::from_fn(|i| d[i][j])));
                // t[j][k] is row k, column j of Bᵀ d: now along each row.
                let v: [[__m512; 4]; 4] =
                    std::array::from_fn(|k| bt(std::array::from_fn(|j| t[j][k])));
                for (k, row) in v.into_iter().enumerate() {
                    for (l, x) in row.into_iter().enumerate() {
                        let at = ((4 * k + l) * self.cin + ci) * self.chunk + 16 * q;
                        _mm512_storeu_ps(dst.add(at), x);
                    }
                }
            }
        }
    }

    /// Product `p`: `m[p] = u_p (cout x cin) . v_p (cin x chunk)` with the direct kernel's tile.
    #[target_feature(enable = "avx512f")]
    unsafe fn product(&self, u: &[f32], v: &[f32], m: &mut [f32], p: usize) {
        let dst = m.as_mut_ptr().add(p * self.cout * self.chunk);
        for oc0 in (0..self.cout).step_by(super::direct::OC) {
            let tile = Tile {
                padded: v,
                wp: self.chunk,
                cin: self.cin,
                weight: u,
                y: 0,
                x0: 0,
                oc0,
                noc: super::direct::OC.min(self.cout - oc0),
                wo: self.chunk,
                ho: 1,
            };
            match self.chunk / 16 {
                4 => tile.run::<1, 4>(Init::default(), dst),
                3 => tile.run::<1, 3>(Init::default(), dst),
                2 => tile.run::<1, 2>(Init::default(), dst),
                _ => tile.run::<1, 1>(Init::default(), dst),
            }
        }
    }

    /// `Aᵀ m A` of every block into output rows `y`, `y + 1` from column `x`, plus `init`.
    #[target_feature(enable = "avx512f")]
    unsafe fn output_transform(&self, m: &[f32], init: Init, y: usize, x: usize, out: *mut f32) {
        let lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
        let hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
        let plane = self.ho * self.wo;
        let m = m.as_ptr();
        for co in 0..self.cout {
            let constant =
                init.bias.map_or(0.0, |b| b[co]) + init.per_channel.map_or(0.0, |p| p[co]);
            let constant = _mm512_set1_ps(constant);
            for q in 0..self.chunk / 16 {
                let mv: [__m512; 16] = std::array::from_fn(|p| {
                    _mm512_loadu_ps(m.add((p * self.cout + co) * self.chunk + 16 * q))
                });
                // Aᵀ along each column l (rows k of m), then along the two rows.
                let cols: [[__m512; 2]; 4] =
                    std::array::from_fn(|l| at(std::array::from_fn(|k| mv[4 * k + l])));
                let s: [[__m512; 4]; 2] =
                    std::array::from_fn(|a| std::array::from_fn(|l| cols[l][a]));
                for (a, srow) in s.iter().enumerate() {
                    let yy = y + a;
                    if yy >= self.ho {
                        break;
                    }
                    let [y0, y1] = at(*srow);
                    let x0 = x + 32 * q;
                    for (half, idx) in [lo, hi].into_iter().enumerate() {
                        let xx = x0 + 16 * half;
                        if xx >= self.wo {
                            break;
                        }
                        let n = 16.min(self.wo - xx);
                        let mask: __mmask16 = if n == 16 { 0xffff } else { (1u16 << n) - 1 };
                        let at = co * plane + yy * self.wo + xx;
                        let mut r = _mm512_add_ps(_mm512_permutex2var_ps(y0, idx, y1), constant);
                        if let Some(res) = init.residual {
                            r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(mask, res.as_ptr().add(at)));
                        }
                        _mm512_mask_storeu_ps(out.add(at), mask, r);
                    }
                }
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
impl Shape {
    unsafe fn input_transform(&self, _: &[f32], _: &mut [f32]) {
        unreachable!("Winograd is only chosen on x86_64 with AVX-512")
    }
    unsafe fn product(&self, _: &[f32], _: &[f32], _: &mut [f32], _: usize) {
        unreachable!("Winograd is only chosen on x86_64 with AVX-512")
    }
    unsafe fn output_transform(&self, _: &[f32], _: Init, _: usize, _: usize, _: *mut f32) {
        unreachable!("Winograd is only chosen on x86_64 with AVX-512")
    }
}

/// `Bᵀ x` for a column `x` of 4: `x0 - x2, x1 + x2, x2 - x1, x1 - x3`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn bt([x0, x1, x2, x3]: [__m512; 4]) -> [__m512; 4] {
    [
        _mm512_sub_ps(x0, x2),
        _mm512_add_ps(x1, x2),
        _mm512_sub_ps(x2, x1),
        _mm512_sub_ps(x1, x3),
    ]
}

/// `Aᵀ x` for a column `x` of 4: `x0 + x1 + x2, x1 - x2 - x3`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn at([x0, x1, x2, x3]: [__m512; 4]) -> [__m512; 2] {
    [
        _mm512_add_ps(_mm512_add_ps(x0, x1), x2),
        _mm512_sub_ps(_mm512_sub_ps(x1, x2), x3),
    ]
}
