//! The pieces the networks share, each written once: GroupNorm and LayerNorm with f32
//! statistics, the budgeted attention, the convolutions, the resnet block.

pub mod attention;
pub mod conv;
pub mod norm;
pub mod resnet;

pub use attention::{attend, OnlineSoftmax, DEFAULT_ATTENTION_BUDGET};
pub use conv::Conv2d;
pub use norm::{GroupNorm, GroupStats, LayerNorm};
pub use resnet::ResnetBlock;
