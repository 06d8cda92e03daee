//! Throughput of the kernels on the shapes SD 1.5 gives them, for `tessera bench kernels`
//! (where the time of a UNet step goes, before and after a change).

use super::{attention, conv, gemm};
use std::time::Instant;

/// One measured shape: what, GFLOP per run, seconds per run.
pub struct Figure {
    pub what: String,
    pub gflop: f64,
    pub seconds: f64,
}

/// The fastest of five runs after a warm-up: on a shared machine the others lose time to
/// neighbours, not to the kernel.
fn time(mut f: impl FnMut()) -> f64 {
    f();
    (0..5)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn values(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect()
}

/// A 3x3 convolution keeping its size.
const SAME: conv::Geometry = conv::Geometry {
    k: 3,
    stride: 1,
    pad: (1, 1, 1, 1),
};

/// `run` (input, f32 weights, channels, output) timed on a `c -> c` convolution at `h x w`.
fn conv_figure(
    what: &str,
    (c, h, w): (usize, usize, usize),
    run: impl Fn(&conv::Input, &[f32], usize, &mut [f32]),
) -> Figure {
    let (x, weight) = (values(c * h * w), values(c * c * 9));
    let mut y = vec![0f32; c * h * w];
    let seconds = time(|| {
        let input = conv::Input {
            sources: vec![(&x, c)],
            h,
            w,
            upsample: false,
            crop: (0, 0),
            pre: None,
        };
        run(&input, &weight, c, &mut y)
    });
    Figure {
        what: what.into(),
        gflop: 2.0 * (c * c * 9 * h * w) as f64 / 1e9,
        seconds,
    }
}

/// Time the kernels on SD 1.5's shapes at a 512 px window (latent 64x64, batch 1).
pub fn run() -> Vec<Figure> {
    let mut out = Vec::new();
    for (m, n, k, what) in [
        (320, 4096, 2880, "gemm conv 3x3 320->320 @64²"),
        (1280, 64, 11520, "gemm conv 3x3 1280->1280 @8²"),
        (4096, 320, 320, "gemm linear 4096x320x320"),
        (4096, 2560, 320, "gemm linear GEGLU 4096x2560x320"),
        (64, 4096, 40, "gemm attention QKᵀ 64x4096x40"),
        (64, 40, 4096, "gemm attention PV 64x40x4096"),
    ] {
        out.push(product(m, n, k, what, false));
    }
    // The UNet's linear layers at a CFG step (batch 2), weights `(out, in)` read transposed as
    // `layers::Linear` reads them.
    for (m, n, k, what) in [
        (8192, 320, 320, "Linear 8192x320 <- 320"),
        (8192, 2560, 320, "Linear 8192x2560 <- 320 (GEGLU)"),
        (8192, 320, 1280, "Linear 8192x320 <- 1280 (FF out)"),
        (2048, 640, 640, "Linear 2048x640 <- 640"),
        (512, 1280, 1280, "Linear 512x1280 <- 1280"),
    ] {
        out.push(product(m, n, k, what, true));
    }
    out.extend(rest());
    if super::bf16::available() {
        out.extend(bf16_figures());
    }
    out
}

/// The bf16 kernels on the UNet's convolutions (one batch item) and linear layers (a CFG
/// step's batch of 2).
fn bf16_figures() -> Vec<Figure> {
    use super::bf16;
    let halves =
        |v: Vec<f32>| -> Vec<half::bf16> { v.into_iter().map(half::bf16::from_f32).collect() };
    let mut out = Vec::new();
    for (c, side) in [(320, 64), (640, 32), (1280, 16), (1280, 8)] {
        let weight = bf16::pack_conv(&halves(values(c * c * 9)), c, c, 9);
        let what = format!("bf16 conv 3x3 {c}->{c} @{side}²");
        out.push(conv_figure(&what, (c, side, side), |input, _, c, y| {
            super::direct::conv2d_bf16(input, &weight, c, SAME, conv::Init::default(), y)
        }));
    }
    for (m, n, k) in [
        (8192, 320, 320),
        (8192, 2560, 320),
        (8192, 320, 1280),
        (2048, 640, 640),
        (512, 1280, 1280),
    ] {
        let x = values(m * k);
        let weight = bf16::pack_linear(&halves(values(n * k)), n, k);
        let mut y = vec![0f32; m * n];
        let seconds = time(|| bf16::linear(&x, m, k, &weight, n, &mut y));
        out.push(Figure {
            what: format!("bf16 Linear {m}x{n} <- {k}"),
            gflop: 2.0 * (m * n * k) as f64 / 1e9,
            seconds,
        });
    }
    for (tokens, keys, heads, d) in [(4096, 4096, 8, 40), (1024, 1024, 8, 80), (4096, 77, 8, 40)] {
        let s = attention::Shape {
            batch: 1,
            n: tokens,
            m: keys,
            heads,
            d,
        };
        let (q, kv) = (values(tokens * heads * d), values(keys * heads * d));
        let mut o = vec![0f32; tokens * heads * d];
        let seconds = time(|| super::flash_bf16::attention(&q, &kv, &kv, s, 0.158, &mut o));
        out.push(Figure {
            what: format!("bf16 attention {tokens}x{keys} tokens, {heads}x{d}"),
            gflop: 4.0 * (tokens * keys * heads * d) as f64 / 1e9,
            seconds,
        });
        let seconds = time(|| super::flash::attention(&q, &kv, &kv, s, 0.158, &mut o));
        out.push(Figure {
            what: format!("f32 attention {tokens}x{keys} tokens, {heads}x{d}"),
            gflop: 4.0 * (tokens * keys * heads * d) as f64 / 1e9,
            seconds,
        });
    }
    out
}

/// `m x k` times `k x n` (or the transpose of an `n x k` weight), timed.
fn product(m: usize, n: usize, k: usize, what: &str, weight_rows: bool) -> Figure {
    {
        let (a, b) = (values(m * k), values(k * n));
        let mut c = vec![0f32; m * n];
        let seconds = time(|| unsafe {
            gemm::sgemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                n,
                false,
                gemm::View::rows(&a, k),
                match weight_rows {
                    true => gemm::View::transposed(&b, k),
                    false => gemm::View::rows(&b, n),
                },
                1.0,
            )
        });
        Figure {
            what: what.into(),
            gflop: 2.0 * (m * n * k) as f64 / 1e9,
            seconds,
        }
    }
}

fn rest() -> Vec<Figure> {
    let mut out = Vec::new();
    let mut scores = values(256 * 4096);
    let seconds = time(|| scores.chunks_mut(4096).for_each(super::math::softmax_row));
    out.push(Figure {
        what: "softmax 256 rows of 4096 (1 thread)".into(),
        gflop: 256.0 * 4096.0 / 1e9,
        seconds,
    });
    let mut xs = values(256 * 4096);
    let seconds = time(|| super::math::silu_inplace(&mut xs));
    out.push(Figure {
        what: "silu 1M values (1 thread)".into(),
        gflop: 256.0 * 4096.0 / 1e9,
        seconds,
    });
    let same = |input: &conv::Input, w: &[f32], c: usize, y: &mut [f32]| {
        conv::conv2d(input, w, c, SAME, conv::Init::default(), y)
    };
    out.push(conv_figure(
        "conv 3x3 320->320 @64² (chosen path)",
        (320, 64, 64),
        same,
    ));
    out.push(conv_figure(
        "conv 3x3 320->320 @64² (im2col + gemm)",
        (320, 64, 64),
        |input, w, c, y| conv::im2col_gemm(input, w, c, SAME, conv::Init::default(), y),
    ));
    // The VAE decoder's convolutions on bands of a 2048² picture (256 px tiles: 32 rows at
    // full resolution), direct and Winograd (its GFLOP/s counted as the direct kernel's work).
    // Then the UNet's at a 512 px window.
    for (net, c, h, w) in [
        ("VAE", 512, 16, 256),
        ("VAE", 512, 16, 512),
        ("VAE", 256, 8, 1024),
        ("VAE", 128, 32, 2048),
        ("UNet", 320, 64, 64),
        ("UNet", 640, 32, 32),
    ] {
        if super::direct::applies(&SAME, w) {
            let what = format!("{net} conv 3x3 {c}->{c} @{h}x{w} (direct)");
            out.push(conv_figure(&what, (c, h, w), |input, w, c, y| {
                super::direct::conv2d(input, w, c, SAME, conv::Init::default(), y)
            }));
        }
        if super::winograd::applies(&SAME, w, c, c) {
            let what = format!("{net} conv 3x3 {c}->{c} @{h}x{w} (Winograd)");
            out.push(conv_figure(&what, (c, h, w), |input, w, c, y| {
                super::winograd::conv2d(input, w, c, SAME, conv::Init::default(), y)
            }));
        }
    }
    attention_figures(&mut out, "self-attention 4096 tokens, 8x40", 8, 40, 0.158);
    // The VAE's mid-block attention: one head of 512 channels (quadratic in the picture).
    attention_figures(
        &mut out,
        "VAE mid attention 4096 tokens, 1x512",
        1,
        512,
        0.044,
    );
    out
}

/// Self-attention over 4096 tokens of `heads` x `d` channels, by gemm query blocks and (where
/// it applies) by the flash kernel.
fn attention_figures(out: &mut Vec<Figure>, what: &str, heads: usize, d: usize, scale: f32) {
    let s = attention::Shape {
        batch: 1,
        n: 4096,
        m: 4096,
        heads,
        d,
    };
    let c = heads * d;
    let (q, kk, v) = (values(4096 * c), values(4096 * c), values(4096 * c));
    let mut o = vec![0f32; 4096 * c];
    let gflop = 4.0 * 4096.0 * 4096.0 * c as f64 / 1e9;
    let seconds = time(|| attention::attention(&q, &kk, &v, s, scale, 256 << 20, &mut o));
    out.push(Figure {
        what: format!("{what} (gemm blocks)"),
        gflop,
        seconds,
    });
    if super::flash::applies() {
        let seconds = time(|| super::flash::attention(&q, &kk, &v, s, scale, &mut o));
        out.push(Figure {
            what: format!("{what} (flash)"),
            gflop,
            seconds,
        });
    }
}
