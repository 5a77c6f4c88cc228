//! One error enum for the core, so adapters (SQL, Polars, CLI) can map each case to
//! their own error channel without string matching.

use std::path::PathBuf;

/// Result alias used across the core.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adapters match on kinds; new kinds may come with new checks, hence
/// `#[non_exhaustive]`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("column '{column}': expected embedding dimension {expected}, found {found}{}", row_suffix(*row))]
    Dimension {
        column: String,
        expected: usize,
        found: usize,
        row: Option<usize>,
    },

    #[error("column '{column}' not found; available columns: {}", available.join(", "))]
    MissingColumn {
        column: String,
        available: Vec<String>,
    },

    #[error("column '{column}' has type {found}; expected {expected}")]
    ColumnType {
        column: String,
        expected: String,
        found: String,
    },

    #[error("unknown group {value} (column '{column}'); the model knows groups: {known}")]
    UnknownGroup {
        column: String,
        value: String,
        known: String,
    },

    #[error("invalid parameter '{name}': {message}")]
    InvalidParam { name: &'static str, message: String },

    #[error("no training rows: {0}")]
    EmptyInput(String),

    #[error("model file {}: {message}", path.display())]
    ModelFile { path: PathBuf, message: String },

    #[error("model: {0}")]
    Model(String),

    #[error("{context}: {source}")]
    Parquet {
        context: String,
        #[source]
        source: parquet::errors::ParquetError,
    },

    #[error("{context}: {source}")]
    Arrow {
        context: String,
        #[source]
        source: arrow_schema::ArrowError,
    },

    #[error(
        "the model has no calibration scores (a model file of format version 1 or 2), so it has no p-values; add them with `reclag calibrate --model MODEL --input ID_ROWS --output NEW_MODEL`, or retrain"
    )]
    NoCalibration,

    #[error("calibration: {0}")]
    Calibration(String),

    /// An output that cannot be written where it was asked for.
    #[error("{0}")]
    Output(String),

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

fn row_suffix(row: Option<usize>) -> String {
    match row {
        Some(r) => format!(" at row {r}"),
        None => String::new(),
    }
}

impl Error {
    pub(crate) fn param(name: &'static str, message: impl Into<String>) -> Self {
        Error::InvalidParam {
            name,
            message: message.into(),
        }
    }
}
