//! Tests of the convolution kernels against the definition.

use super::*;

/// Direct convolution, the definition.
#[allow(clippy::too_many_arguments)]
fn reference(
    x: &[f32],
    cin: usize,
    h: usize,
    w: usize,
    weight: &[f32],
    bias: &[f32],
    cout: usize,
    g: Geometry,
) -> Vec<f32> {
    let (ho, wo) = g.out_dims((h, w));
    let (pt, _, pl, _) = g.pad;
    let mut out = vec![0f32; cout * ho * wo];
    for co in 0..cout {
        for yo in 0..ho {
            for xo in 0..wo {
                let mut s = bias[co] as f64;
                for ci in 0..cin {
                    for ky in 0..g.k {
                        for kx in 0..g.k {
                            let yi = (yo * g.stride + ky) as isize - pt as isize;
                            let xi = (xo * g.stride + kx) as isize - pl as isize;
                            if yi >= 0 && xi >= 0 && (yi as usize) < h && (xi as usize) < w {
                                s += x[(ci * h + yi as usize) * w + xi as usize] as f64
                                    * weight[((co * cin + ci) * g.k + ky) * g.k + kx] as f64;
                            }
                        }
                    }
                }
                out[(co * ho + yo) * wo + xo] = s as f32;
            }
        }
    }
    out
}

use crate::kernels::test_values as values;
use crate::kernels::tests::{each_isa, upsampled_by_hand};

/// The convolution of seeded values by `run` (filled with NaN first, so an output left
/// unwritten shows) and by the definition.
fn against_reference(
    (cin, cout, h, w): (usize, usize, usize, usize),
    g: Geometry,
    seed: u32,
    run: impl Fn(&Input, &[f32], Init, &mut [f32]),
) -> (Vec<f32>, Vec<f32>) {
    let x = values(cin * h * w, seed);
    let weight = values(cout * cin * g.k * g.k, seed + 1);
    let bias = values(cout, seed + 2);
    let want = reference(&x, cin, h, w, &weight, &bias, cout, g);
    let mut got = vec![f32::NAN; want.len()];
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
    run(&input, &weight, init, &mut got);
    (got, want)
}

/// Largest absolute difference; infinite where `got` holds a NaN.
fn max_error(got: &[f32], want: &[f32]) -> f32 {
    got.iter()
        .zip(want)
        .map(|(a, b)| {
            if a.is_nan() {
                f32::INFINITY
            } else {
                (a - b).abs()
            }
        })
        .fold(0f32, f32::max)
}

#[test]
fn convolutions_match_the_definition() {
    let cases = [
        (3, 1, (1, 1, 1, 1)),
        (1, 1, (0, 0, 0, 0)),
        (3, 2, (0, 1, 0, 1)),
        (3, 2, (1, 1, 1, 1)),
    ];
    each_isa(|isa| {
        for (k, stride, pad) in cases {
            let dims = (5, 13, 9, 37);
            let g = Geometry { k, stride, pad };
            let (got, want) = against_reference(dims, g, 1, |input, weight, init, out| {
                conv2d(input, weight, dims.1, g, init, out)
            });
            let (gemm, _) = against_reference(dims, g, 1, |input, weight, init, out| {
                im2col_gemm(input, weight, dims.1, g, init, out)
            });
            let err_gemm = max_error(&gemm, &want);
            assert!(
                err_gemm < 1e-4,
                "im2col: k {k} stride {stride} pad {pad:?}: {err_gemm}"
            );
            let err = max_error(&got, &want);
            assert!(
                err < 1e-4,
                "{isa:?} k {k} stride {stride} pad {pad:?}: {err}"
            );
        }
    })
}

/// Wide rows (split into column chunks per task) and a single row with many channels
/// (output-channel blocks split across tasks) still give every output exactly once.
#[test]
fn wide_and_narrow_images_split_into_tasks_match_the_definition() {
    each_isa(|isa| {
        for (cin, cout, h, w) in [(64, 13, 2, 1100), (600, 20, 1, 100)] {
            let g = Geometry {
                k: 3,
                stride: 1,
                pad: (1, 1, 1, 1),
            };
            let (got, want) =
                against_reference((cin, cout, h, w), g, 4, |input, weight, init, out| {
                    conv2d(input, weight, cout, g, init, out)
                });
            let err = max_error(&got, &want);
            // Sums of 9·cin products of values in [-1, 1]: f32 rounding grows with the count;
            // an output left unwritten counts as infinite.
            assert!(
                err < 1e-5 * (9 * cin) as f32,
                "{isa:?} {cin}x{h}x{w}: {err}"
            );
        }
    })
}

/// Every kernel (the direct one from 16 output columns, Winograd; on AVX2 and AVX-512),
/// with the upsampled rows cropped as a band of the tiled VAE crops them.
#[test]
fn concatenation_upsampling_cropping_and_the_pre_op_read_by_index() {
    let (c1, c2, cout, h, w) = (3, 2, 4, 5, 9);
    let a = values(c1 * h * w, 4);
    let b = values(c2 * h * w, 5);
    let scale = values(c1 + c2, 6);
    let shift = values(c1 + c2, 7);
    let weight = values(cout * (c1 + c2) * 9, 8);
    let bias = vec![0f32; cout];
    let g = Geometry {
        k: 3,
        stride: 1,
        pad: (1, 1, 1, 1),
    };
    each_isa(|isa| {
        for crop in [(0, 0), (1, 0), (0, 1), (1, 1), (3, 2)] {
            // The same input built by hand: concatenated, activated, upsampled, cropped.
            let rows = crop.0..2 * h - crop.1;
            let x = upsampled_by_hand(&[&a, &b], (h, w), (&scale, &shift), crop);
            let want = reference(&x, c1 + c2, rows.len(), 2 * w, &weight, &bias, cout, g);
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
            let winograd = super::super::winograd::applies(&g, 1 << 10, 64, 64);
            for kernel in ["direct", "im2col", "winograd"] {
                let mut got = vec![f32::NAN; want.len()];
                match kernel {
                    "direct" => conv2d(&input, &weight, cout, g, Init::default(), &mut got),
                    "im2col" => im2col_gemm(&input, &weight, cout, g, Init::default(), &mut got),
                    _ if winograd => super::super::winograd::conv2d(
                        &input,
                        &weight,
                        cout,
                        g,
                        Init::default(),
                        &mut got,
                    ),
                    _ => continue,
                }
                let err = max_error(&got, &want);
                assert!(err < 1e-4, "{isa:?} crop {crop:?}, {kernel}: {err}");
            }
        }
    })
}

/// Winograd F(2x2, 3x3) against the definition: odd output rows and columns, widths that a
/// chunk of 64 blocks does not divide, every padding a band of the tiled VAE uses, bias,
/// per-channel term and residual (its concatenated, upsampled, cropped input: the test above).
/// On AVX2 and AVX-512 (elsewhere Winograd is never chosen).
#[test]
fn winograd_matches_the_definition() {
    if !super::super::winograd::applies(&SAME3, 1 << 10, 64, 64) {
        eprintln!("Winograd needs AVX2 on x86_64 (and no TESSERA_NO_WINOGRAD): not run");
        return;
    }
    use super::super::winograd::conv2d as winograd;
    each_isa(|isa| {
        for (i, (cin, cout, h, w, pad)) in [
            (32, 37, 5, 130, (1, 1, 1, 1)),
            (40, 32, 4, 256, (0, 1, 1, 1)),
            (33, 6, 7, 67, (1, 0, 1, 1)),
            (16, 40, 2, 300, (0, 0, 1, 1)),
        ]
        .into_iter()
        .enumerate()
        {
            let g = Geometry {
                k: 3,
                stride: 1,
                pad,
            };
            let (ho, wo) = g.out_dims((h, w));
            let residual = values(cout * ho * wo, 9 + i as u32);
            let per_channel = values(cout, 10 + i as u32);
            let (got, mut want) =
                against_reference((cin, cout, h, w), g, 3, |input, weight, init, out| {
                    let init = Init {
                        residual: Some(&residual),
                        per_channel: Some(&per_channel),
                        ..init
                    };
                    winograd(input, weight, cout, g, init, out)
                });
            for (j, v) in want.iter_mut().enumerate() {
                *v += residual[j] + per_channel[j / (ho * wo)];
            }
            let err = max_error(&got, &want);
            assert!(
                err < 1e-5 * (9 * cin) as f32,
                "{isa:?} {cin}->{cout} {h}x{w} {pad:?}: {err}"
            );
        }
    })
}

const SAME3: Geometry = Geometry {
    k: 3,
    stride: 1,
    pad: (1, 1, 1, 1),
};
