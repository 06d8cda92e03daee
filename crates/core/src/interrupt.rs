//! The interrupt flag. The front end (the CLI's Ctrl-C handler) raises it; long work checks it
//! at every UNet evaluation and VAE tile and stops with [`Error::Interrupted`]. The library
//! never touches signals itself.

use crate::{Error, Result};
use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Ask the work in progress to stop at its next check. Returns whether it had been asked already.
pub fn request() -> bool {
    INTERRUPTED.swap(true, Ordering::SeqCst)
}

/// Err(Interrupted) once an interrupt has been requested.
pub fn check() -> Result<()> {
    match INTERRUPTED.load(Ordering::SeqCst) {
        true => Err(Error::Interrupted),
        false => Ok(()),
    }
}

/// The same check for code that returns candle errors: the interrupt stays typed inside
/// (see [`crate::error::Interrupt`]).
#[cfg(feature = "candle")]
pub fn check_candle() -> candle_core::Result<()> {
    match INTERRUPTED.load(Ordering::SeqCst) {
        true => Err(crate::error::Interrupt.into_candle()),
        false => Ok(()),
    }
}
