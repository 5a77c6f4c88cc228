//! Errors of the IO and command layer. Every variant names what the user has to look
//! at (file, column, row) so the message alone says what to fix.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Core(#[from] reclag::Error),

    #[error("{}: {source}", path.display())]
    Parquet {
        path: PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },

    #[error("{}: {source}", path.display())]
    Arrow {
        path: PathBuf,
        #[source]
        source: arrow_schema::ArrowError,
    },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// A core error that happened while reading a particular file.
    #[error("{}: {source}", path.display())]
    InFile {
        path: PathBuf,
        #[source]
        source: reclag::Error,
    },

    /// A Polars step failed; `context` says which (the file, the plan, the output).
    #[error("{context}: {source}")]
    Polars {
        context: String,
        #[source]
        source: polars::prelude::PolarsError,
    },

    /// Bad arguments or input, with a hint of what to do next.
    #[error("{0}")]
    Usage(String),
}

impl Error {
    pub(crate) fn polars(
        context: impl Into<String>,
    ) -> impl FnOnce(polars::prelude::PolarsError) -> Error {
        let context = context.into();
        move |source| Error::Polars { context, source }
    }

    pub(crate) fn in_file(path: &std::path::Path) -> impl FnOnce(reclag::Error) -> Error + '_ {
        move |source| Error::InFile {
            path: path.to_path_buf(),
            source,
        }
    }
}
