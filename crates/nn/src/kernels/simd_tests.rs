//! Tests of the vectors of 16 against their definitions.

use super::*;

/// Both implementations against the definitions, lane by lane; AVX2 wherever this CPU has
/// it, AVX-512 where it has that.
#[test]
fn vectors_of_16_agree_with_their_definitions() {
    let a: Vec<f32> = (0..32).map(|i| i as f32).collect();
    let even: Vec<f32> = (0..16).map(|i| (2 * i) as f32).collect();
    let odd: Vec<f32> = (0..16).map(|i| (2 * i + 1) as f32).collect();
    let mut checked = 0;
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2(a: &[f32], even: &[f32], odd: &[f32]) {
            check::<Avx2x16>(a, even, odd)
        }
        // SAFETY: the CPU has AVX2 and FMA.
        unsafe { avx2(&a, &even, &odd) };
        checked += 1;
    }
    if std::arch::is_x86_feature_detected!("avx512f") {
        #[target_feature(enable = "avx512f")]
        unsafe fn avx512(a: &[f32], even: &[f32], odd: &[f32]) {
            check::<__m512>(a, even, odd)
        }
        // SAFETY: the CPU has AVX-512F.
        unsafe { avx512(&a, &even, &odd) };
        checked += 1;
    }
    if checked == 0 {
        eprintln!("neither AVX2+FMA nor AVX-512F on this CPU: not run");
    }
}

#[inline(always)]
unsafe fn check<S: F32x16>(a: &[f32], even: &[f32], odd: &[f32]) {
    let get = |v: S| {
        let mut out = [0f32; 16];
        v.store(out.as_mut_ptr());
        out
    };
    let (x, y) = (S::load(a.as_ptr()), S::load(a.as_ptr().add(16)));
    let (e, o) = S::deinterleave(x, y);
    assert_eq!((&get(e)[..], &get(o)[..]), (even, odd));
    let (lo, hi) = S::interleave(e, o);
    assert_eq!((&get(lo)[..], &get(hi)[..]), (&a[..16], &a[16..]));
    let sum = get(S::splat(2.0)
        .mul_add(x, S::splat(3.0))
        .sub(S::splat(1.0))
        .add(y));
    let want: Vec<f32> = (0..16).map(|i| 1.0 + 3.0 * a[i] + a[16 + i]).collect();
    assert_eq!(&sum[..], &want[..]);
    for n in 1..16 {
        let first = get(S::load_first(a.as_ptr().add(3), n));
        let want: Vec<f32> = (0..16)
            .map(|i| if i < n { a[3 + i] } else { 0.0 })
            .collect();
        assert_eq!(&first[..], &want[..], "load_first {n}");
        let mut out = [-1f32; 17];
        S::splat(7.0).store_first(out.as_mut_ptr(), n);
        assert!(out[..n].iter().all(|&v| v == 7.0) && out[n..].iter().all(|&v| v == -1.0));
    }
    assert_eq!(get(S::zero()), [0.0; 16]);
    let (xs, ys): (Vec<f32>, Vec<f32>) = (0..16)
        .map(|i| (-(i as f32) * 5.7 - 0.3, (i as f32 - 8.0) * 1.5))
        .unzip();
    let (x, y) = (S::load(xs.as_ptr()), S::load(ys.as_ptr()));
    for (e, v) in get(x.exp()).iter().zip(&xs) {
        assert!(
            (e - v.exp()).abs() <= 4.0 * f32::EPSILON * v.exp(),
            "exp({v}): {e}"
        );
    }
    let rounded = get(S::splat(0.5).add(y).round());
    let want: Vec<f32> = ys.iter().map(|v| (v + 0.5).round_ties_even()).collect();
    assert_eq!(rounded.to_vec(), want);
    let scaled = get(S::splat(3.0).scale_pow2(S::splat(-4.0)));
    assert_eq!(scaled, [0.1875; 16]);
    assert_eq!(x.reduce_max(), xs[0]);
    assert_eq!(y.reduce_add(), ys.iter().sum::<f32>());
    let fused: Vec<f32> = (0..16)
        .map(|i| (-xs[i]).mul_add(ys[i], 2.0 * ys[i]))
        .collect();
    assert_eq!(get(y.add(y).neg_mul_add(x, y)).to_vec(), fused);
    for n in [0, 5, 9, 16, 40] {
        let m = get(x.max_first(y, n));
        for i in 0..16 {
            let want = if i < n { xs[i].max(ys[i]) } else { xs[i] };
            assert_eq!(m[i], want, "max_first {n}, lane {i}");
        }
    }
}
