//! tessera's bottom layer, shared by every other crate and dependent on none of them: errors
//! that explain themselves, the interrupt flag, the progress observer, tile geometry (one for
//! the canvas windows and the VAE tiles), the names of the user's choices, and the allocator
//! that recycles a band loop's buffers.

pub mod choices;
pub mod error;
pub mod files;
pub mod geometry;
pub mod interrupt;
pub mod observer;
pub mod recycle;
pub mod units;

pub use error::{Error, Result};
pub use geometry::Rect;
pub use observer::{Observer, Quiet};
