//! The pieces the networks share, each written once: GroupNorm and LayerNorm with f32
//! statistics, the budgeted attention, the convolutions, the resnet block.

pub mod attention;
pub mod conv;
mod conv_bands;
#[cfg(feature = "cuda")]
pub mod cuda_kernels;
#[cfg(feature = "cudnn")]
pub mod cudnn;
pub mod linear;
pub mod norm;
pub mod resnet;

pub use attention::{attend, heads, HeldKeys, OnlineSoftmax, DEFAULT_ATTENTION_BUDGET};
pub use conv::{Affine, Conv2d, DeviceNorm, Fused};
pub use linear::Linear;
pub use norm::{GroupNorm, GroupStats, LayerNorm};
pub use resnet::ResnetBlock;
