//! Tests of the bf16 kernels against the definition. On bf16 values the products are exact,
//! so only f32 summation separates the kernels from the definition; on other values the
//! bound is the rounding of the activations (2^-9 of each product, 2^-8 allowed).

use super::super::conv::{Geometry, Init, Input, Pre};
use super::super::direct::conv2d_bf16;
use super::*;

use crate::kernels::test_values as values;

fn rounded(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| bf16::from_f32(x).to_f32()).collect()
}

fn halves(v: &[f32]) -> Vec<bf16> {
    v.iter().map(|&x| bf16::from_f32(x)).collect()
}

/// The convolution by the definition (f64 sums), and the sums of the products' magnitudes.
fn definition(
    x: &[f32],
    (cin, h, w): (usize, usize, usize),
    weight: &[f32],
    cout: usize,
    g: Geometry,
) -> (Vec<f32>, Vec<f32>) {
    let (ho, wo) = g.out_dims((h, w));
    let (pt, _, pl, _) = g.pad;
    let (mut out, mut magnitude) = (vec![0f32; cout * ho * wo], vec![0f32; cout * ho * wo]);
    for co in 0..cout {
        for yo in 0..ho {
            for xo in 0..wo {
                let (mut s, mut m) = (0f64, 0f64);
                for ci in 0..cin {
                    for ky in 0..g.k {
                        for kx in 0..g.k {
                            let yi = (yo + ky) as isize - pt as isize;
                            let xi = (xo + kx) as isize - pl as isize;
                            if yi >= 0 && xi >= 0 && (yi as usize) < h && (xi as usize) < w {
                                let p = x[(ci * h + yi as usize) * w + xi as usize] as f64
                                    * weight[((co * cin + ci) * g.k + ky) * g.k + kx] as f64;
                                s += p;
                                m += p.abs();
                            }
                        }
                    }
                }
                out[(co * ho + yo) * wo + xo] = s as f32;
                magnitude[(co * ho + yo) * wo + xo] = m as f32;
            }
        }
    }
    (out, magnitude)
}

/// Whether every output is within `bound(i)` of the definition (NaN, an output left
/// unwritten, never is).
fn within(got: &[f32], want: &[f32], bound: impl Fn(usize) -> f32) -> Result<(), String> {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let close = (g - w).abs() <= bound(i);
        if g.is_nan() || !close {
            return Err(format!("output {i}: {g} against {w}"));
        }
    }
    Ok(())
}

#[test]
fn packing_keeps_every_weight() {
    for (cout, cin, kk) in [(70, 5, 9), (13, 64, 1), (3, 1, 9)] {
        let w = halves(&values(cout * cin * kk, 3));
        assert_eq!(unpack_conv(&pack_conv(&w, cout, cin, kk), cout, cin, kk), w);
        let w = halves(&values(cout * cin, 4));
        assert_eq!(unpack_linear(&pack_linear(&w, cout, cin), cout, cin), w);
    }
    let (lo, hi) = unpack(pair(1.5, -2.0));
    assert_eq!((lo.to_f32(), hi.to_f32()), (1.5, -2.0));
}

#[test]
fn rounding_is_to_nearest_even_vectorised_or_not() {
    let src = values(1000, 9);
    let mut got = vec![0u16; src.len()];
    round_into(&src, &mut got);
    let want: Vec<u16> = src.iter().map(|&x| bf16::from_f32(x).to_bits()).collect();
    assert_eq!(got, want);
    let mut pairs = vec![0u32; 37];
    pair_rows(&src[..37], Some(&src[100..137]), &mut pairs);
    for (x, &p) in pairs.iter().enumerate() {
        assert_eq!(p, pair(src[x], src[100 + x]));
    }
    // Neighbours of an odd-length row (the last paired with zero).
    let mut neighbours = vec![u32::MAX; 19];
    pairs_of(&src[..37], &mut neighbours);
    for (i, &p) in neighbours.iter().enumerate() {
        let hi = if 2 * i + 1 < 37 { src[2 * i + 1] } else { 0.0 };
        assert_eq!(p, pair(src[2 * i], hi));
    }
}

fn skip() -> bool {
    if !available() {
        eprintln!("this CPU has no AVX512_BF16: the bf16 kernels cannot run here");
    }
    !available()
}

#[test]
fn convolutions_on_bf16_values_match_the_definition() {
    if skip() {
        return;
    }
    let same = (1, 1, 1, 1);
    // Odd channels, narrow and wide rows, a 1x1 kernel, asymmetric padding.
    for (cin, cout, h, w, k, pad) in [
        (5, 13, 9, 37, 3, same),
        (64, 13, 2, 1100, 3, same),
        (600, 20, 1, 100, 3, same),
        (8, 7, 4, 8, 3, (0, 1, 0, 1)),
        (6, 70, 3, 20, 1, (0, 0, 0, 0)),
    ] {
        let g = Geometry { k, stride: 1, pad };
        let x = rounded(&values(cin * h * w, 1));
        let weight = rounded(&values(cout * cin * k * k, 2));
        let bias = values(cout, 3);
        let (mut want, _) = definition(&x, (cin, h, w), &weight, cout, g);
        let plane = want.len() / cout;
        want.iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v += bias[i / plane]);
        let input = Input {
            sources: vec![(&x, cin)],
            h,
            w,
            upsample: false,
            crop: (0, 0),
            pre: None,
        };
        let init = Init {
            bias: Some(&bias),
            ..Default::default()
        };
        let packed = pack_conv(&halves(&weight), cout, cin, k * k);
        let mut got = vec![f32::NAN; want.len()];
        conv2d_bf16(&input, &packed, cout, g, init, &mut got);
        let tolerance = 1e-6 * (cin * k * k) as f32;
        let case = format!("{cin}->{cout} {h}x{w} k{k}");
        within(&got, &want, |_| tolerance).unwrap_or_else(|e| panic!("{case}: {e}"));
    }
}

/// Concatenated, upsampled, cropped and activated input (its values not bf16 ones).
#[test]
fn convolutions_read_their_input_by_index_in_bf16_too() {
    if skip() {
        return;
    }
    let (c1, c2, cout, h, w) = (3, 2, 4, 5, 9);
    let (a, b) = (values(c1 * h * w, 4), values(c2 * h * w, 5));
    let (scale, shift) = (values(c1 + c2, 6), values(c1 + c2, 7));
    let weight = rounded(&values(cout * (c1 + c2) * 9, 8));
    let g = Geometry {
        k: 3,
        stride: 1,
        pad: (1, 1, 1, 1),
    };
    for crop in [(0, 0), (1, 0), (0, 1), (3, 2)] {
        let rows = crop.0..2 * h - crop.1;
        let x = crate::kernels::tests::upsampled_by_hand(&[&a, &b], (h, w), (&scale, &shift), crop);
        let (want, magnitude) = definition(&x, (c1 + c2, rows.len(), 2 * w), &weight, cout, g);
        let input = Input {
            sources: vec![(&a, c1), (&b, c2)],
            h,
            w,
            upsample: true,
            crop,
            pre: Some(Pre {
                scale: &scale,
                shift: &shift,
                silu: true,
            }),
        };
        let packed = pack_conv(&halves(&weight), cout, c1 + c2, 9);
        let mut got = vec![f32::NAN; want.len()];
        conv2d_bf16(&input, &packed, cout, g, Init::default(), &mut got);
        within(&got, &want, |i| magnitude[i] / 256.0 + 1e-5)
            .unwrap_or_else(|e| panic!("crop {crop:?}: {e}"));
    }
}

#[test]
fn linear_products_match_the_definition() {
    if skip() {
        return;
    }
    for (rows, cin, cout) in [(13, 5, 70), (100, 70, 130), (7, 640, 64)] {
        let w = rounded(&values(cout * cin, 11));
        let packed = pack_linear(&halves(&w), cout, cin);
        for exact in [true, false] {
            let x = values(rows * cin, 12);
            let x = if exact { rounded(&x) } else { x };
            let start = values(rows * cout, 13);
            let (mut want, mut magnitude) = (start.clone(), vec![0f32; rows * cout]);
            for r in 0..rows {
                for n in 0..cout {
                    let products = (0..cin).map(|c| x[r * cin + c] as f64 * w[n * cin + c] as f64);
                    want[r * cout + n] += products.clone().sum::<f64>() as f32;
                    magnitude[r * cout + n] = products.map(f64::abs).sum::<f64>() as f32;
                }
            }
            let mut got = start;
            linear(&x, rows, cin, &packed, cout, &mut got);
            let bound = |i: usize| match exact {
                true => 1e-6 * cin as f32 + 1e-6,
                false => magnitude[i] / 256.0 + 1e-5,
            };
            let case = format!("{rows}x{cin} -> {cout}, bf16 values {exact}");
            within(&got, &want, bound).unwrap_or_else(|e| panic!("{case}: {e}"));
        }
    }
}
