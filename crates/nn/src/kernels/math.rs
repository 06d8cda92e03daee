//! Element-wise math, vectorised: the loops are written so that LLVM vectorises them, and are
//! compiled three times (AVX-512, AVX2+FMA, baseline) with the widest one picked at run time.
//! `exp` is a Cephes-style range reduction with a degree-6 polynomial (within 2 ulp of
//! `f32::exp` over the range softmax and SiLU use); `erf` is Abramowitz & Stegun 7.1.26
//! (absolute error under 1.5e-7, below f32 rounding of GELU's output).

/// Run `body` compiled for the widest instruction set this CPU has ([`crate::kernels::isa`]).
macro_rules! dispatch {
    ($body:expr) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f")]
            unsafe fn wide512<R>(f: impl FnOnce() -> R) -> R {
                f()
            }
            #[target_feature(enable = "avx2,fma")]
            unsafe fn wide256<R>(f: impl FnOnce() -> R) -> R {
                f()
            }
            match $crate::kernels::isa() {
                // SAFETY: the CPU has AVX-512F.
                $crate::kernels::Isa::Avx512 => unsafe { wide512(|| $body) },
                // SAFETY: the CPU has AVX2 and FMA.
                $crate::kernels::Isa::Avx2 => unsafe { wide256(|| $body) },
                $crate::kernels::Isa::Portable => $body,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            $body
        }
    }};
}
pub(crate) use dispatch;

/// e^x for one value, branch-free so loops over it vectorise.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.336_55, 88.376_26);
    let n = (x * LOG2E + 0.5).floor();
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 5e-1;
    let p = p * r * r + r + 1.0;
    // SAFETY: n is finite and within [-127, 128] after the clamp above; an unchecked
    // conversion vectorises (`as` saturates lane by lane, which LLVM leaves scalar).
    let n: i32 = unsafe { n.to_int_unchecked() };
    p * f32::from_bits(((n + 127) as u32) << 23)
}

/// SiLU `x / (1 + e^-x)`.
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// erf, Abramowitz & Stegun 7.1.26.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let y = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152_1 + t * 1.061_405_4))));
    let e = 1.0 - y * exp(-a * a);
    e.copysign(x)
}

/// The exact (erf) GELU, as diffusers' GEGLU uses it.
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// `x * scale + shift`, then SiLU when `silu`, in place.
pub fn affine_inplace(xs: &mut [f32], scale: f32, shift: f32, silu_after: bool) {
    dispatch!(if silu_after {
        xs.iter_mut().for_each(|x| *x = silu(*x * scale + shift))
    } else {
        xs.iter_mut().for_each(|x| *x = *x * scale + shift)
    })
}

/// SiLU in place.
pub fn silu_inplace(xs: &mut [f32]) {
    dispatch!(xs.iter_mut().for_each(|x| *x = silu(*x)))
}

/// GEGLU: `out[i] = a[i] * gelu(g[i])`.
pub fn geglu(a: &[f32], g: &[f32], out: &mut [f32]) {
    dispatch!(for ((o, &a), &g) in out.iter_mut().zip(a).zip(g) {
        *o = a * gelu(g)
    })
}

/// Lanes of the reductions below: LLVM keeps IEEE order, so a reduction vectorises only when
/// written as this many independent accumulators.
const LANES: usize = 16;

/// `(Σ v, Σ v²)` of a run of values, in f32 lanes.
pub fn sum_and_squares(run: &[f32]) -> (f32, f32) {
    dispatch!({
        let (mut s, mut q) = ([0f32; LANES], [0f32; LANES]);
        let mut chunks = run.chunks_exact(LANES);
        for c in &mut chunks {
            for ((s, q), &v) in s.iter_mut().zip(q.iter_mut()).zip(c) {
                *s += v;
                *q += v * v;
            }
        }
        let tail = chunks.remainder();
        (
            s.iter().chain(tail).sum::<f32>(),
            q.iter().sum::<f32>() + tail.iter().map(|v| v * v).sum::<f32>(),
        )
    })
}

/// Softmax of one row in place, in f32 (max subtracted, then normalised).
pub fn softmax_row(row: &mut [f32]) {
    let inv = 1.0 / exp_row(row);
    dispatch!(row.iter_mut().for_each(|v| *v *= inv))
}

/// `e^(v - max)` of one row in place; returns the sum (the softmax's denominator), so callers
/// can normalise something smaller than the row (attention normalises its output instead).
pub fn exp_row(row: &mut [f32]) -> f32 {
    let max = max(row);
    exp_shifted(row, max)
}

/// The largest value of a row.
pub fn max(row: &[f32]) -> f32 {
    dispatch!({
        let mut lanes = [f32::NEG_INFINITY; LANES];
        let mut chunks = row.chunks_exact(LANES);
        for c in &mut chunks {
            for (m, &v) in lanes.iter_mut().zip(c) {
                *m = m.max(v);
            }
        }
        chunks
            .remainder()
            .iter()
            .chain(&lanes)
            .fold(f32::NEG_INFINITY, |m, &v| m.max(v))
    })
}

/// `e^(v - shift)` of a row in place; returns the sum.
pub fn exp_shifted(row: &mut [f32], shift: f32) -> f32 {
    dispatch!({
        row.iter_mut().for_each(|v| *v = exp(*v - shift));
        let mut sums = [0f32; LANES];
        let mut chunks = row.chunks_exact(LANES);
        for c in &mut chunks {
            for (s, &v) in sums.iter_mut().zip(c) {
                *s += v;
            }
        }
        chunks.remainder().iter().sum::<f32>() + sums.iter().sum::<f32>()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_std_within_a_few_ulp() {
        let mut worst = 0f64;
        for i in -8700..8800 {
            let x = i as f32 * 0.01;
            let (got, want) = (exp(x) as f64, (x as f64).exp());
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 3e-7, "relative error {worst:e}");
    }

    #[test]
    fn gelu_and_silu_match_their_definitions() {
        for i in -600..600 {
            let x = i as f32 * 0.01;
            let g = 0.5 * x as f64 * (1.0 + libm_erf(x as f64 / 2f64.sqrt()));
            assert!((gelu(x) as f64 - g).abs() < 2e-6, "gelu({x})");
            let s = x as f64 / (1.0 + (-x as f64).exp());
            assert!(
                (silu(x) as f64 - s).abs() < 2e-6 * (1.0 + s.abs()),
                "silu({x})"
            );
        }
    }

    /// erf by its series / continued fraction in f64, for reference.
    fn libm_erf(x: f64) -> f64 {
        // Abramowitz & Stegun 7.1.28 is not precise enough; integrate instead.
        let n = 20000;
        let h = x / n as f64;
        let f = |t: f64| (-t * t).exp();
        let mut s = f(0.0) + f(x);
        for i in 1..n {
            s += f(i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 };
        }
        s * h / 3.0 * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn softmax_rows_sum_to_one() {
        let mut row: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin() * 30.0).collect();
        softmax_row(&mut row);
        let sum: f32 = row.iter().sum();
        assert!((sum - 1.0).abs() < 1e-5, "{sum}");
    }
}
