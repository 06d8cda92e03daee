//! Linear layers `y = x Wᵀ + b` over the last dimension. On host f32 tensors the product is
//! one gemm with the weight read transposed in place and the output started from the bias
//! (and a residual); elsewhere candle's matmul. bf16 weights on a CPU with AVX512_BF16 are
//! packed once for the bf16 kernel ([`kernels::bf16`]) and kept only in that form.

use crate::kernels::{self, bf16, gemm};
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

pub struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
    /// The bias on the host as f32, for the kernels.
    bias_f32: Option<Vec<f32>>,
}

/// A linear layer's weight as loaded, or packed for the bf16 kernel (the same bytes).
enum Weight {
    Loaded(Tensor),
    Pairs {
        pairs: Vec<u32>,
        out: usize,
        inp: usize,
    },
}

impl Linear {
    pub fn new(vb: VarBuilder, cin: usize, cout: usize, bias: bool) -> Result<Self> {
        let inner = match bias {
            true => candle_nn::linear(cin, cout, vb)?,
            false => candle_nn::linear_no_bias(cin, cout, vb)?,
        };
        let bias_f32 = match inner.bias() {
            Some(b) if b.device().is_cpu() => Some(b.to_dtype(DType::F32)?.to_vec1()?),
            _ => None,
        };
        let packed = match bf16::available() {
            true => bf16::with_host_values(inner.weight(), |w| bf16::pack_linear(w, cout, cin)),
            false => None,
        };
        let weight = match packed {
            Some(pairs) => Weight::Pairs {
                pairs,
                out: cout,
                inp: cin,
            },
            None => Weight::Loaded(inner.weight().clone()),
        };
        Ok(Self {
            weight,
            bias: inner.bias().cloned(),
            bias_f32,
        })
    }

    /// The weight as a tensor (unpacked again when packed).
    pub fn weight(&self) -> Result<Tensor> {
        match &self.weight {
            Weight::Loaded(w) => Ok(w.clone()),
            Weight::Pairs { pairs, out, inp } => Tensor::from_vec(
                bf16::unpack_linear(pairs, *out, *inp),
                (*out, *inp),
                &Device::Cpu,
            ),
        }
    }

    /// The dtype the weight is stored in.
    pub fn weight_dtype(&self) -> DType {
        match &self.weight {
            Weight::Loaded(w) => w.dtype(),
            Weight::Pairs { .. } => DType::BF16,
        }
    }

    pub fn device(&self) -> Device {
        match &self.weight {
            Weight::Loaded(w) => w.device().clone(),
            Weight::Pairs { .. } => Device::Cpu,
        }
    }

    pub fn out_features(&self) -> usize {
        match &self.weight {
            Weight::Loaded(w) => w.dims()[0],
            Weight::Pairs { out, .. } => *out,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_residual(x, None)
    }

    /// `x Wᵀ + b + residual`.
    pub fn forward_residual(&self, x: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        let fast = kernels::usable(x) && residual.is_none_or(kernels::usable);
        if let (true, Weight::Pairs { pairs, out, inp }) = (fast, &self.weight) {
            if x.dims().last() != Some(inp) {
                candle_core::bail!("linear layer of {inp} inputs applied to {:?}", x.shape());
            }
            return self.product(x, residual, *out, |xs, rows, dst| {
                bf16::linear(xs, rows, *inp, pairs, *out, dst)
            });
        }
        let w = &kernels::in_dtype(&self.weight()?, x.dtype())?;
        if !(fast && kernels::usable(w)) {
            let b = match &self.bias {
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
        kernels::with_f32(w, |ws| {
            self.product(x, residual, cout, |xs, rows, out| {
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
        })?
    }

    /// A fresh `(.., cout)` output started from the bias and `residual`, then `accumulate`
    /// adds the product of the `rows` rows of `x` to it.
    fn product(
        &self,
        x: &Tensor,
        residual: Option<&Tensor>,
        cout: usize,
        accumulate: impl FnOnce(&[f32], usize, &mut [f32]),
    ) -> Result<Tensor> {
        let cin = *x.dims().last().expect("a last dimension");
        let rows = x.elem_count() / cin.max(1);
        let mut dims = x.dims().to_vec();
        *dims.last_mut().expect("a last dimension") = cout;
        kernels::with_f32(x, |xs| {
            let fill = |res: &[f32]| {
                kernels::new_f32(dims.clone(), |out| {
                    // In parallel: the first writes to a fresh output take its page faults,
                    // which on one thread left the other core idle.
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
                    accumulate(xs, rows, out)
                })
            };
            match residual {
                Some(r) => kernels::with_f32(r, fill)?,
                None => fill(&[]),
            }
        })?
    }
}
