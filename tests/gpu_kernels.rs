//! tessera's own CUDA kernels against the same computation on the CPU (candle's ops, or the
//! definition in f64), in f32 and f16, on the device `TESSERA_TEST_DEVICE` names. The
//! reference takes the input as the kernel gets it (rounded to f16 for the f16 case), so what
//! remains is the kernel's own error: f32 arithmetic and the rounding of its output.

use crate::common;
use candle_core::{DType, Device, Result, Tensor, D};
use tessera::nn::layers::cuda_kernels;

/// Values with some spread and an offset (GroupNorm's statistics must not cancel).
fn ramp(dims: &[usize], k: f32, offset: f32) -> Result<Tensor> {
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|i| (i as f32 * k).sin() * 3.0 + offset)
        .collect();
    Tensor::from_vec(v, dims, &Device::Cpu)
}

fn device() -> Option<Device> {
    let device = common::runtime().device;
    device.is_cuda().then_some(device)
}

/// `x` as a kernel of `dtype` reads it, back in f32.
fn as_read(x: &Tensor, dtype: DType) -> Result<Tensor> {
    x.to_dtype(dtype)?.to_dtype(DType::F32)
}

/// Largest |a - b| relative to the largest |b|.
fn relative(a: &Tensor, b: &Tensor) -> f64 {
    common::max_abs_diff(&a.to_dtype(DType::F32).unwrap(), b) / common::max_abs(b).max(1e-12)
}

#[test]
fn softmax_equals_candles_on_the_cpu() -> Result<()> {
    let Some(dev) = device() else { return Ok(()) };
    // Rows as long as self-attention's (4096), cross-attention's (77) and a short one.
    for (cols, tol_f32, tol_f16) in [(4096, 1e-5, 2e-3), (77, 1e-5, 2e-3), (5, 1e-6, 2e-3)] {
        let x = (ramp(&[3, 7, cols], 0.731, 0.5)? * 4.0)?;
        for (dtype, tol) in [(DType::F32, tol_f32), (DType::F16, tol_f16)] {
            let want = candle_nn::ops::softmax_last_dim(&as_read(&x, dtype)?)?;
            let got = cuda_kernels::softmax_last_dim(&x.to_dtype(dtype)?.to_device(&dev)?)?;
            let err = relative(&got.to_device(&Device::Cpu)?, &want);
            assert!(
                err < tol,
                "softmax {cols} cols {dtype:?}: relative error {err:.2e}"
            );
        }
    }
    Ok(())
}

#[test]
fn group_norm_equals_the_host_path() -> Result<()> {
    let Some(dev) = device() else { return Ok(()) };
    let (c, groups) = (12, 4);
    let x = ramp(&[2, c, 9, 7], 0.37, 40.0)?;
    let gamma = ramp(&[c], 0.7, 1.0)?;
    let beta = ramp(&[c], 1.3, 0.0)?;
    // The definition, on the CPU in f64.
    let definition = |x: &Tensor| -> Result<Tensor> {
        let x64 = x
            .to_dtype(DType::F64)?
            .reshape((2, groups, c / groups * 63))?;
        let mean = x64.mean_keepdim(D::Minus1)?;
        let centred = x64.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centred
            .broadcast_div(&(var + 1e-5)?.sqrt()?)?
            .reshape((2, c, 9, 7))?;
        let affine = |t: &Tensor| t.to_dtype(DType::F64)?.reshape((c, 1, 1));
        let y = normed
            .broadcast_mul(&affine(&gamma)?)?
            .broadcast_add(&affine(&beta)?)?;
        (&y * candle_nn::ops::sigmoid(&y)?)?.to_dtype(DType::F32)
    };
    let on = |t: &Tensor| t.reshape((c, 1, 1))?.to_device(&dev);
    for (dtype, tol) in [(DType::F32, 1e-5), (DType::F16, 2e-3)] {
        let want = definition(&as_read(&x, dtype)?)?;
        let xd = x.to_dtype(dtype)?.to_device(&dev)?;
        let got = cuda_kernels::group_norm(&xd, &on(&gamma)?, &on(&beta)?, groups, 1e-5, true)
            .expect("tessera's CUDA kernels load on this device")?;
        let err = relative(&got.to_device(&Device::Cpu)?, &want);
        assert!(err < tol, "GroupNorm {dtype:?}: relative error {err:.2e}");
    }
    Ok(())
}

#[test]
fn geglu_equals_candles_on_the_cpu() -> Result<()> {
    let Some(dev) = device() else { return Ok(()) };
    let h = ramp(&[2, 33, 2 * 40], 0.173, 0.1)?;
    for (dtype, tol) in [(DType::F32, 1e-5), (DType::F16, 2e-3)] {
        let parts = as_read(&h, dtype)?.chunk(2, D::Minus1)?;
        let want = (&parts[0] * parts[1].gelu_erf()?)?;
        let got = cuda_kernels::geglu(&h.to_dtype(dtype)?.to_device(&dev)?)
            .expect("tessera's CUDA kernels load on this device")?;
        let err = relative(&got.to_device(&Device::Cpu)?, &want);
        assert!(err < tol, "GEGLU {dtype:?}: relative error {err:.2e}");
    }
    Ok(())
}
