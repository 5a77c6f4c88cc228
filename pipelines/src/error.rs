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
    /// Whether the error is a closed reader of standard output (`reclag sql … | head`):
    /// the reader has what it wanted, so the command ends quietly and successfully, as
    /// Unix tools do.
    pub fn is_broken_pipe(&self) -> bool {
        let mut e: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(err) = e {
            if err
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            {
                return true;
            }
            e = err.source();
        }
        // Some engines keep only the message of the IO error they met.
        self.to_string().contains("Broken pipe (os error 32)")
    }

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
