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
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
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
