//! Tests of the f32 flash attention against the definition.

use super::*;

/// Wide heads make several key chunks: the online softmax must fold them exactly. Key counts
/// that end inside a panel and a vector, heads not a multiple of 16 wide, a last partial
/// tile of queries; on AVX2 and AVX-512.
#[test]
fn chunks_fold_into_the_exact_softmax() {
    crate::kernels::tests::each_isa(|isa| {
        if !applies() {
            return;
        }
        for (n, m, d) in [(13, 300, 512), (20, 77, 40), (7, 1000, 24)] {
            let s = Shape {
                batch: 1,
                n,
                m,
                heads: 1,
                d,
            };
            let val = crate::kernels::test_values;
            let (q, k, v) = (val(n * d, 1), val(m * d, 2), val(m * d, 3));
            let scale = 0.05f32;
            let mut got = vec![0f32; q.len()];
            attention(&q, &k, &v, s, scale, &mut got);
            let mut worst = 0f64;
            for i in 0..n {
                let logits: Vec<f64> = (0..m)
                    .map(|j| {
                        scale as f64
                            * (0..d)
                                .map(|t| q[i * d + t] as f64 * k[j * d + t] as f64)
                                .sum::<f64>()
                    })
                    .collect();
                let max = logits.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
                let z: f64 = e.iter().sum();
                for t in 0..d {
                    let want: f64 = (0..m).map(|j| e[j] / z * v[j * d + t] as f64).sum();
                    worst = worst.max((got[i * d + t] as f64 - want).abs());
                }
            }
            assert!(worst < 1e-5, "{isa:?} {n}x{m}x{d}: {worst}");
        }
    })
}
