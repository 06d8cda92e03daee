//! 2-D convolutions: one type for every convolution of every network, so that how a
//! convolution is computed is decided in one place.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: usize,
    padding: usize,
}

impl Conv2d {
    /// `k` x `k` kernel from `cin` to `cout` channels with bias.
    pub fn new(
        vb: VarBuilder,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        Ok(Self {
            weight: vb.get((cout, cin, k, k), "weight")?,
            bias: Some(vb.get(cout, "bias")?),
            stride,
            padding,
        })
    }

    /// 3x3, stride 1, padding 1: the shape-keeping convolution.
    pub fn same3(vb: VarBuilder, cin: usize, cout: usize) -> Result<Self> {
        Self::new(vb, cin, cout, 3, 1, 1)
    }

    /// 1x1: a per-pixel linear map.
    pub fn point(vb: VarBuilder, cin: usize, cout: usize) -> Result<Self> {
        Self::new(vb, cin, cout, 1, 1, 0)
    }

    pub fn out_channels(&self) -> usize {
        self.weight.dims()[0]
    }

    pub fn stride(&self) -> usize {
        self.stride
    }

    /// The convolution with its own padding.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, self.padding)
    }

    /// The convolution over an input that already carries its halo (padding 0): what a tile
    /// of a larger image needs.
    pub fn forward_unpadded(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, 0)
    }

    fn run(&self, x: &Tensor, padding: usize) -> Result<Tensor> {
        let y = x.conv2d(&self.weight, padding, self.stride, 1, 1)?;
        match &self.bias {
            Some(b) => y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?),
            None => Ok(y),
        }
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Conv2d::forward(self, x)
    }
}
