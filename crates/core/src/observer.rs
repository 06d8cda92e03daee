//! What long work tells whoever watches it: notes for the user and counted tasks (denoising
//! steps, tiles). The CLI draws progress bars from it; tests and library users stay quiet.

/// Receives notes and task progress. Every method has a silent default.
pub trait Observer: Sync {
    /// A line for the user ("guide: 256x256 -> poster.guide.png").
    fn note(&self, _message: &str) {}
    /// A task of `total` units starts (`what`: "denoise", "decode").
    fn begin(&self, _what: &str, _total: u64) {}
    /// What the current task is doing now ("step 3/20"); shown beside its bar.
    fn status(&self, _message: &str) {}
    /// One unit of the current task is done.
    fn advance(&self) {}
    /// The current task is over.
    fn end(&self) {}
}

/// An observer that says nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quiet;

impl Observer for Quiet {}
