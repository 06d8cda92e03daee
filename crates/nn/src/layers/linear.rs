//! Linear layers `y = x Wᵀ + b` over the last dimension. On host f32 tensors the product is
//! one gemm with the weight read transposed in place and the output started from the bias
//! (and a residual); elsewhere candle's matmul.

use crate::kernels::{self, gemm};
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

pub struct Linear {
    inner: candle_nn::Linear,
    /// The bias on the host as f32, for the kernel.
    bias_f32: Option<Vec<f32>>,
}

impl Linear {
    pub fn new(vb: VarBuilder, cin: usize, cout: usize, bias: bool) -> Result<Self> {
        let inner = match bias {
            true => candle_nn::linear(cin, cout, vb)?,
            false => candle_nn::linear_no_bias(cin, cout, vb)?,
        };
        let bias_f32 = match inner.bias() {
            Some(b) if b.device().is_cpu() => Some(b.to_dtype(candle_core::DType::F32)?.to_vec1()?),
            _ => None,
        };
        Ok(Self { inner, bias_f32 })
    }

    pub fn weight(&self) -> &Tensor {
        self.inner.weight()
    }

    pub fn out_features(&self) -> usize {
        self.inner.weight().dims()[0]
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_residual(x, None)
    }

    /// `x Wᵀ + b + residual`.
    pub fn forward_residual(&self, x: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        let w = &kernels::in_dtype(self.inner.weight(), x.dtype())?;
        let fast = kernels::usable(x) && kernels::usable(w) && residual.is_none_or(kernels::usable);
        if !fast {
            let b = match self.inner.bias() {
                Some(b) => Some(b.to_dtype(x.dtype())?),
                None => None,
            };
            let y = candle_nn::Linear::new(w.clone(), b).forward(x)?;
            return match residual {
                Some(r) => y + r,
                None => Ok(y),
            };
        }
        let (cout, cin) = w.dims2()?;
        let rows = x.elem_count() / cin;
        let mut dims = x.dims().to_vec();
        *dims.last_mut().expect("a last dimension") = cout;
        kernels::with_f32(x, |xs| {
            kernels::with_f32(w, |ws| {
                let fill = |res: &[f32]| {
                    kernels::new_f32(dims.clone(), |out| {
                        // In parallel: the first writes to a fresh output take its page
                        // faults, which on one thread left the other core idle.
                        out.par_chunks_mut(cout)
                            .enumerate()
                            .with_min_len(64)
                            .for_each(|(r, row)| {
                                match &self.bias_f32 {
                                    Some(b) => row.copy_from_slice(b),
                                    None => row.fill(0.0),
                                }
                                if !res.is_empty() {
                                    let res = &res[r * cout..(r + 1) * cout];
                                    row.iter_mut().zip(res).for_each(|(o, &v)| *o += v);
                                }
                            });
                        // SAFETY: x is rows x cin, the weight cout x cin read transposed, out
                        // rows x cout.
                        unsafe {
                            gemm::sgemm(
                                rows,
                                cout,
                                cin,
                                out.as_mut_ptr(),
                                cout,
                                true,
                                gemm::View::rows(xs, cin),
                                gemm::View::transposed(ws, cin),
                                1.0,
                            )
                        }
                    })
                };
                match residual {
                    Some(r) => kernels::with_f32(r, fill)?,
                    None => fill(&[]),
                }
            })?
        })?
    }
}
