//! Winograd F(2x2, 3x3) for stride-1 3x3 convolutions on CPUs with AVX2 or AVX-512 (one code,
//! [`super::simd`]'s vectors of 16): each 2x2 block of
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
use super::simd::{Avx2x16, F32x16};
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::__m512;

use super::direct::{lay_out, Tile};
use super::operand::{Geometry, Init, Input};
use super::{Isa, SharedOut};
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
            && super::isa() >= Isa::Avx2
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
            let args = TaskArgs {
                patch: &padded[2 * row * cin * wp + 2 * b0..],
                u: &u,
                v,
                m,
                init,
                y: 2 * row,
                x: 2 * b0,
                out: out_ptr.ptr(),
            };
            // SAFETY: `applies` checked AVX2 or wider; the patch read lies within the padded
            // layout (hp x wp); the task writes output rows 2*row, 2*row+1 (those below ho
            // left out), columns 2*b0 .. 2*(b0+chunk) (those past wo left out), which no other
            // task writes.
            unsafe { shape.task(args) }
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
    /// One task (see [`conv2d`]) with the widest vectors this CPU runs.
    unsafe fn task(&self, args: TaskArgs) {
        match super::isa() {
            Isa::Avx512 => self.task_avx512(args),
            _ => self.task_avx2(args),
        }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn task_avx512(&self, args: TaskArgs) {
        self.task_with::<__m512>(args)
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn task_avx2(&self, args: TaskArgs) {
        self.task_with::<Avx2x16>(args)
    }

    #[inline(always)]
    unsafe fn task_with<S: F32x16>(&self, a: TaskArgs) {
        self.input_transform::<S>(a.patch, a.v);
        for p in 0..16 {
            let v = &a.v[p * self.cin * self.chunk..];
            self.product(
                &a.u[p * self.cout * self.cin..][..self.cout * self.cin],
                v,
                a.m,
                p,
            );
        }
        self.output_transform::<S>(a.m, a.init, a.y, a.x, a.out);
    }

    /// `Bᵀ d B` of the chunk's 4x4 patches starting at `src` (row 0 of the patches, column
    /// 0 of the first block, in the `(hp, cin, wp)` layout), into `v` as `(16, cin, chunk)`.
    #[inline(always)]
    unsafe fn input_transform<S: F32x16>(&self, src: &[f32], v: &mut [f32]) {
        let row_pitch = self.cin * self.wp;
        let (s, dst) = (src.as_ptr(), v.as_mut_ptr());
        for ci in 0..self.cin {
            for q in 0..self.chunk / 16 {
                // d[i][j]: patch row i, column j, of 16 blocks (their columns 2 apart).
                let d: [[S; 4]; 4] = std::array::from_fn(|i| {
                    let p = s.add(i * row_pitch + ci * self.wp + 32 * q);
                    let (c0, c1) = S::deinterleave(S::load(p), S::load(p.add(16)));
                    let (c2, c3) = S::deinterleave(S::load(p.add(2)), S::load(p.add(18)));
                    [c0, c1, c2, c3]
                });
                let t: [[S; 4]; 4] = std::array::from_fn(|j| bt(std::array::from_fn(|i| d[i][j])));
                // t[j][k] is row k, column j of Bᵀ d: now along each row.
                let v: [[S; 4]; 4] = std::array::from_fn(|k| bt(std::array::from_fn(|j| t[j][k])));
                for (k, row) in v.into_iter().enumerate() {
                    for (l, x) in row.into_iter().enumerate() {
                        x.store(dst.add(((4 * k + l) * self.cin + ci) * self.chunk + 16 * q));
                    }
                }
            }
        }
    }

    /// Product `p`: `m[p] = u_p (cout x cin) . v_p (cin x chunk)` with the direct kernel's tile.
    #[inline(always)]
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
            tile.run::<1>(self.chunk / 16, Init::default(), dst);
        }
    }

    /// `Aᵀ m A` of every block into output rows `y`, `y + 1` from column `x`, plus `init`.
    #[inline(always)]
    unsafe fn output_transform<S: F32x16>(
        &self,
        m: &[f32],
        init: Init,
        y: usize,
        x: usize,
        out: *mut f32,
    ) {
        let plane = self.ho * self.wo;
        let m = m.as_ptr();
        for co in 0..self.cout {
            let constant =
                init.bias.map_or(0.0, |b| b[co]) + init.per_channel.map_or(0.0, |p| p[co]);
            let constant = S::splat(constant);
            for q in 0..self.chunk / 16 {
                let mv: [S; 16] = std::array::from_fn(|p| {
                    S::load(m.add((p * self.cout + co) * self.chunk + 16 * q))
                });
                // Aᵀ along each column l (rows k of m), then along the two rows.
                let cols: [[S; 2]; 4] =
                    std::array::from_fn(|l| at(std::array::from_fn(|k| mv[4 * k + l])));
                let s: [[S; 4]; 2] = std::array::from_fn(|a| std::array::from_fn(|l| cols[l][a]));
                for (a, srow) in s.iter().enumerate() {
                    let yy = y + a;
                    if yy >= self.ho {
                        break;
                    }
                    let [y0, y1] = at(*srow);
                    let (first, second) = S::interleave(y0, y1);
                    let x0 = x + 32 * q;
                    for (half, r) in [first, second].into_iter().enumerate() {
                        let xx = x0 + 16 * half;
                        if xx >= self.wo {
                            break;
                        }
                        let n = 16.min(self.wo - xx);
                        let at = co * plane + yy * self.wo + xx;
                        let mut r = r.add(constant);
                        if let Some(res) = init.residual {
                            r = r.add(S::load_n(res.as_ptr().add(at), n));
                        }
                        r.store_n(out.add(at), n);
                    }
                }
            }
        }
    }
}

/// What one task transforms, multiplies and writes.
struct TaskArgs<'a> {
    /// The task's patch of the laid-out input.
    patch: &'a [f32],
    /// The transformed weights.
    u: &'a [f32],
    v: &'a mut [f32],
    m: &'a mut [f32],
    init: Init<'a>,
    /// The output's first row and column.
    y: usize,
    x: usize,
    out: *mut f32,
}

#[cfg(not(target_arch = "x86_64"))]
impl Shape {
    unsafe fn task(&self, _: TaskArgs) {
        unreachable!("Winograd is only chosen on x86_64 with AVX2 or AVX-512")
    }
}

/// `Bᵀ x` for a column `x` of 4: `x0 - x2, x1 + x2, x2 - x1, x1 - x3`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn bt<S: F32x16>([x0, x1, x2, x3]: [S; 4]) -> [S; 4] {
    [x0.sub(x2), x1.add(x2), x2.sub(x1), x1.sub(x3)]
}

/// `Aᵀ x` for a column `x` of 4: `x0 + x1 + x2, x1 - x2 - x3`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn at<S: F32x16>([x0, x1, x2, x3]: [S; 4]) -> [S; 2] {
    [x0.add(x1).add(x2), x1.sub(x2).sub(x3)]
}
