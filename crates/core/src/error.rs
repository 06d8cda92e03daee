//! Errors that explain themselves: bad input names the file, the field and the fix.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Something the user gave us is wrong. The CLI exits with status 2.
    #[error("{}{}: {message}\n  fix: {fix}", path.display(), field.as_deref().map(|f| format!(" [{f}]")).unwrap_or_default())]
    Input {
        path: PathBuf,
        field: Option<String>,
        message: String,
        fix: String,
    },
    #[cfg(feature = "candle")]
    #[error("tensor computation failed: {0}")]
    Candle(candle_core::Error),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("interrupted")]
    Interrupted,
    #[error("{0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Bad user input at `path` (a file or folder), optionally at `field` inside it.
    pub fn input(
        path: impl AsRef<Path>,
        field: Option<&str>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Error::Input {
            path: path.as_ref().to_path_buf(),
            field: field.map(str::to_string),
            message: message.into(),
            fix: fix.into(),
        }
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// Exit status for the CLI: 2 for bad input, 130 when interrupted, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Input { .. } => 2,
            Error::Interrupted => 130,
            _ => 1,
        }
    }
}

/// The user's interrupt on its way through code that returns candle errors (the model layer):
/// carried as a typed value inside candle's error and turned back into [`Error::Interrupted`]
/// (exit 130) when it leaves candle, rather than flattened into a message (exit 1).
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupt;

#[cfg(feature = "candle")]
impl Interrupt {
    pub fn into_candle(self) -> candle_core::Error {
        candle_core::Error::WrappedContext {
            wrapped: Box::new(self),
            context: "interrupted".into(),
        }
    }

    /// Whether `e` is (or wraps, through context and backtraces) an interrupt.
    pub fn is_in(e: &candle_core::Error) -> bool {
        use candle_core::Error as E;
        match e {
            E::WrappedContext { wrapped, .. } => wrapped.downcast_ref::<Interrupt>().is_some(),
            E::WithBacktrace { inner, .. }
            | E::Context { inner, .. }
            | E::WithPath { inner, .. } => Self::is_in(inner),
            _ => false,
        }
    }
}

#[cfg(feature = "candle")]
impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        match Interrupt::is_in(&e) {
            true => Error::Interrupted,
            false => Error::Candle(e),
        }
    }
}
