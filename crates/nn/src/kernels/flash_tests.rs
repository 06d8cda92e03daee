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
            let mut got = vec![f32::NAN; q.len()];
            attention(&q, &k, &v, s, scale, &mut got);
            let want = crate::kernels::tests::reference_attention(&q, &k, &v, s, scale);
            let worst = crate::kernels::tests::worst_error(&got, &want);
            assert!(worst < 1e-5, "{isa:?} {n}x{m}x{d}: {worst}");
        }
    })
}
