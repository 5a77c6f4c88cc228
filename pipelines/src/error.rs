//! Errors of the IO and command layer. Every variant names what the user has to look
//! at (file, column, row) so the message alone says what to fix.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Callers match on the kinds they can act on (a held lock: wait; a missing input:
/// skip; refused credentials: reconfigure); more kinds may come, hence
/// `#[non_exhaustive]`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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

    /// Another drift run holds the output's lock; it is released or taken over when
    /// that run ends, so a caller may wait and retry.
    #[error(
        "{output}: another drift run holds this output ({holder}); {hint}. \
         Wait for it, or pass --lock-wait (e.g. 30m) to queue behind it"
    )]
    Locked {
        output: String,
        /// The holder's description (host, process, start time).
        holder: String,
        hint: String,
    },

    /// Another run took this run's lock over (its heartbeat stalled): it stopped before
    /// committing more, and a rerun continues where it stopped.
    #[error(
        "{output}: another drift run took over this output's lock (this run's heartbeat stalled); stopping before the next partition"
    )]
    LockLost { output: String },

    /// The output cannot be locked at all (no conditional writes, or a filesystem
    /// without locks): a rerun will not help; another output location will.
    #[error("{output}: {reason}")]
    Unlockable { output: String, reason: String },

    /// An object or path that does not exist.
    #[error("{location}: does not exist (check the path or URL)")]
    NotFound { location: String },

    /// An input that names no Parquet file (a glob with no match, an empty
    /// directory, a missing path).
    #[error("{message}")]
    NoInput { input: String, message: String },

    /// The store refused the credentials for a request.
    #[error(
        "{doing} {location}: {source}; the credentials were refused: check them and the bucket policy (see `reclag --help`)"
    )]
    Denied {
        location: String,
        doing: String,
        #[source]
        source: Box<object_store::Error>,
    },

    /// Any other store failure (after the store's own retries).
    #[error("{doing} {location}: {source}")]
    Store {
        location: String,
        doing: String,
        #[source]
        source: Box<object_store::Error>,
    },

    /// Credentials missing or half set for a store.
    #[error("{message}")]
    Credentials { store: String, message: String },

    /// A path or URL that cannot name a location (bad syntax, unknown scheme, no
    /// bucket).
    #[error("{message}")]
    Location { spec: String, message: String },

    /// Inputs of one job whose schemas differ: `file` against the first input, in
    /// `columns`.
    #[error("{}: {detail}", file.display())]
    SchemaMismatch {
        file: PathBuf,
        columns: Vec<String>,
        detail: String,
    },

    /// A drift output made with another model: its metrics would not compare, so
    /// the new model needs a new output.
    #[error(
        "{output}: this output was produced with model {recorded}, but model.url now has checksum {found}; use a new output.url for the new model (metrics from two models are not comparable)"
    )]
    ModelChanged {
        output: String,
        recorded: String,
        found: String,
    },

    /// A drift output judged against another reference: its rates would not compare.
    #[error(
        "{output}: this output was judged against reference {recorded}, but the reference is now {found}; use a new output.url (rates against two references are not comparable)"
    )]
    ReferenceChanged {
        output: String,
        recorded: String,
        found: String,
    },

    /// `--strict`: a partition that would have been skipped; the ones before it are
    /// published.
    #[error(
        "partition {partition}: {reason} (--strict: a partition that would be skipped fails the run; the partitions before it are published)"
    )]
    StrictSkip { partition: String, reason: String },

    /// Bad arguments or input, with a hint of what to do next.
    #[error("{0}")]
    Usage(String),
}

impl Error {
    /// `--cluster` on a build without the `cluster` feature.
    #[cfg(not(feature = "cluster"))]
    pub fn without_cluster(url: &str) -> Error {
        Error::Usage(format!(
            "--cluster {url}: this reclag was built without the `cluster` feature; build it with `cargo install reclag-pipelines --features cluster`"
        ))
    }

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
