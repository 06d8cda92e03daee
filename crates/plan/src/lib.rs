//! tessera's planning: what a canvas spec asks for and what it will cost, without a tensor.
//!
//! - [`spec`]: the TOML format, command-line overrides, and the validated `Settings`.
//! - [`validate`]: the validators, one of each.
//! - [`plan`]: the window grid, the conditionings, image regions and the guide pass.
//! - [`machine`]: the canvas-sized memory no setting can shrink, against the machine's.
//! - [`budget`]: the per-phase memory estimate (`estimate`) and the settings that fit
//!   `--max-memory`.

pub mod budget;
mod estimate;
pub mod machine;
pub mod plan;
mod relax;
pub mod spec;
pub mod validate;

pub use budget::ModelFacts;
pub use plan::Plan;
pub use spec::Settings;
