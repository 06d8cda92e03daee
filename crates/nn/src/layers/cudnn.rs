//! Convolutions through cuDNN (`--features cudnn`), called by tessera rather than through
//! candle's `conv2d`, for three reasons measured on an H200 (BENCHMARKS.md, "cuDNN, tried"):
//! candle asks cuDNN's heuristics for an algorithm on *every* call (about 5 ms each under
//! cuDNN 9: a 512² UNet step took 521 ms, against 72 ms with candle's im2col), allocates a
//! zeroed workspace per call, and runs half precision with half-precision accumulation. Here
//! the algorithm is chosen once per shape and kept, the workspace is not zeroed, half
//! precision accumulates in f32 on tensor cores (as PyTorch does), and f32 stays f32 (no TF32).
//! A residual is added by cuDNN itself (`beta = 1` over a copy of it), not by another pass.

use candle_core::cuda_backend::cudarc::cudnn::{sys, ConvForward, Cudnn, CudnnDataType};
use candle_core::cuda_backend::cudarc::driver::CudaSlice;
use candle_core::cuda_backend::{CudaDType, CudaDevice};
use candle_core::{
    backend::BackendStorage, CpuStorage, CudaStorage, CustomOp2, CustomOp3, DType, Layout, Result,
    Shape, Tensor,
};
use half::{bf16, f16};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// `x` (B, Cin, H, W) convolved with `w` (Cout, Cin, k, k), symmetric zero padding `pad`
/// (rows, columns), plus `residual` (shaped like the output) when given.
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    pad: (usize, usize),
    stride: usize,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    let op = Conv { pad, stride };
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    match residual {
        Some(r) => x.apply_op3_no_bwd(&w, &r.contiguous()?, &op),
        None => x.apply_op2_no_bwd(&w, &op),
    }
}

struct Conv {
    pad: (usize, usize),
    stride: usize,
}

/// What an algorithm is chosen for.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    dtype: DType,
    x: [usize; 4],
    w: [usize; 4],
    pad: (usize, usize),
    stride: usize,
}

thread_local! {
    /// cuDNN handles are neither Send nor Sync: one per thread and stream.
    static HANDLES: std::cell::RefCell<HashMap<usize, Arc<Cudnn>>> = Default::default();
}

/// The algorithm per shape, shared by every thread (the heuristics' answer does not depend on
/// the handle).
static ALGORITHMS: Mutex<Option<HashMap<Key, sys::cudnnConvolutionFwdAlgo_t>>> = Mutex::new(None);

fn handle(device: &CudaDevice) -> Result<Arc<Cudnn>> {
    let stream = device.cuda_stream();
    let id = stream.cu_stream() as usize;
    HANDLES.with(|h| {
        if let Some(c) = h.borrow().get(&id) {
            return Ok(c.clone());
        }
        let c = Cudnn::new(stream).map_err(candle_core::Error::wrap)?;
        h.borrow_mut().insert(id, c.clone());
        Ok(c)
    })
}

impl Conv {
    fn out_shape(&self, x: [usize; 4], w: [usize; 4]) -> [usize; 4] {
        let out = |n: usize, p: usize, k: usize| (n + 2 * p - k) / self.stride + 1;
        [
            x[0],
            w[0],
            out(x[2], self.pad.0, w[2]),
            out(x[3], self.pad.1, w[3]),
        ]
    }

    fn run(
        &self,
        x: (&CudaStorage, &Layout),
        w: (&CudaStorage, &Layout),
        residual: Option<(&CudaStorage, &Layout)>,
    ) -> Result<(CudaStorage, Shape)> {
        match x.0.dtype() {
            DType::F16 => self.typed::<f16>(x, w, residual),
            DType::BF16 => self.typed::<bf16>(x, w, residual),
            DType::F32 => self.typed::<f32>(x, w, residual),
            other => candle_core::bail!("cuDNN convolution: unsupported dtype {other:?}"),
        }
    }

    fn typed<T>(
        &self,
        (xs, xl): (&CudaStorage, &Layout),
        (ws, wl): (&CudaStorage, &Layout),
        residual: Option<(&CudaStorage, &Layout)>,
    ) -> Result<(CudaStorage, Shape)>
    where
        T: CudaDType + CudnnDataType + candle_core::WithDType,
        T: candle_core::cuda_backend::cudarc::driver::DeviceRepr,
    {
        let dims4 = |l: &Layout| -> Result<[usize; 4]> {
            let (a, b, c, d) = l.shape().dims4()?;
            Ok([a, b, c, d])
        };
        let (xd, wd) = (dims4(xl)?, dims4(wl)?);
        let yd = self.out_shape(xd, wd);
        let device = xs.device().clone();
        let cudnn = handle(&device)?;
        let int = |d: [usize; 4]| d.map(|v| v as i32);
        let nchw = sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
        let e = candle_core::Error::wrap;
        let driver = candle_core::Error::wrap;
        let mut conv = cudnn
            .create_conv2d::<f32>(
                [self.pad.0 as i32, self.pad.1 as i32],
                [self.stride as i32; 2],
                [1, 1],
                sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
            )
            .map_err(e)?;
        // Tensor cores for half precision (f32 accumulation: the f32 compute type above);
        // plain FMA for f32, so that f32 stays exact (the default would allow TF32).
        let math = match T::DATA_TYPE {
            sys::cudnnDataType_t::CUDNN_DATA_FLOAT => sys::cudnnMathType_t::CUDNN_FMA_MATH,
            _ => sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH,
        };
        conv.set_math_type(math).map_err(e)?;
        let xdesc = cudnn.create_4d_tensor::<T>(nchw, int(xd)).map_err(e)?;
        let wdesc = cudnn.create_4d_filter::<T>(nchw, int(wd)).map_err(e)?;
        let ydesc = cudnn.create_4d_tensor::<T>(nchw, int(yd)).map_err(e)?;
        let op = ConvForward {
            conv: &conv,
            x: &xdesc,
            w: &wdesc,
            y: &ydesc,
        };
        let key = Key {
            dtype: xs.dtype(),
            x: xd,
            w: wd,
            pad: self.pad,
            stride: self.stride,
        };
        let cached = ALGORITHMS
            .lock()
            .ok()
            .and_then(|m| m.as_ref()?.get(&key).copied());
        let algo = match cached {
            Some(a) => a,
            None => {
                let a = op.pick_algorithm().map_err(e)?;
                if let Ok(mut m) = ALGORITHMS.lock() {
                    m.get_or_insert_with(HashMap::new).insert(key, a);
                }
                a
            }
        };
        let stream = device.cuda_stream();
        let bytes = op.get_workspace_size(algo).map_err(e)?;
        // SAFETY: cuDNN writes the workspace before reading it; it needs no zeroing.
        let mut workspace = match bytes {
            0 => None,
            n => Some(unsafe { stream.alloc::<u8>(n) }.map_err(driver)?),
        };
        let n: usize = yd.iter().product();
        let x_slice = xs.as_cuda_slice::<T>()?.slice(xl.start_offset()..);
        let w_slice = ws.as_cuda_slice::<T>()?.slice(wl.start_offset()..);
        let (mut y, beta): (CudaSlice<T>, T) = match residual {
            Some((rs, rl)) => {
                let r = rs.as_cuda_slice::<T>()?.slice(rl.start_offset()..);
                let mut y = unsafe { stream.alloc::<T>(n) }.map_err(driver)?;
                stream.memcpy_dtod(&r.slice(..n), &mut y).map_err(driver)?;
                (y, T::from_f64(1.0))
            }
            None => (
                unsafe { stream.alloc::<T>(n) }.map_err(driver)?,
                T::from_f64(0.0),
            ),
        };
        // SAFETY: descriptors match the slices' dtype and contiguous NCHW shapes above.
        unsafe {
            op.launch(
                algo,
                workspace.as_mut(),
                (T::from_f64(1.0), beta),
                &x_slice,
                &w_slice,
                &mut y,
            )
        }
        .map_err(e)?;
        Ok((
            CudaStorage::wrap_cuda_slice(y, device),
            Shape::from(yd.to_vec()),
        ))
    }
}

impl CustomOp2 for Conv {
    fn name(&self) -> &'static str {
        "tessera-cudnn-conv2d"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("the cuDNN convolution runs on CUDA tensors only")
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        w: &CudaStorage,
        wl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        self.run((x, xl), (w, wl), None)
    }
}

impl CustomOp3 for Conv {
    fn name(&self) -> &'static str {
        "tessera-cudnn-conv2d-residual"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("the cuDNN convolution runs on CUDA tensors only")
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        w: &CudaStorage,
        wl: &Layout,
        r: &CudaStorage,
        rl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        self.run((x, xl), (w, wl), Some((r, rl)))
    }
}
