//! Polars frames read by reclag's Parquet reader.
//!
//! Polars' own `scan_parquet` decodes an embedding column several times slower than
//! reclag's list reader (BENCHMARKS.md: 5.3 s against 1.1 s for the same 1M × 512
//! count), and Polars 0.55's streaming engine takes no custom source
//! (`AnonymousScan` is unimplemented there). So a Polars job that wants reclag's reader
//! takes frames from [`Frames`] and runs its row-wise plan on each:
//!
//! ```ignore
//! use reclag_pipelines::store::{StoreEnv, Stores};
//! let stores = Stores::new(StoreEnv::from_process());
//! let mut ood = 0;
//! for frame in reclag_pipelines::ops::frames::Frames::open(&stores, &["data/*.parquet".into()])? {
//!     let flagged = frame?
//!         .lazy()
//!         .filter(reclag_udfs::polars::is_ood(col("embedding"), &model, Some(col("label"))))
//!         .collect()
//!         .unwrap();
//!     ood += flagged.height();
//! }
//! ```
//!
//! Decoding runs ahead on a thread of its own while the caller works on the previous
//! frame, and a frame's columns are the reader's buffers, handed to Polars through the
//! Arrow C Data Interface without a copy. Memory is bounded by the frames in flight,
//! not by the dataset. A plan that needs every row at once (a sort, a global
//! aggregate) belongs in `scan_parquet`; one that maps or filters rows runs here.

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, sync_channel};

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use polars::prelude::{Column, DataFrame, Series};

use crate::error::{Error, Result};
use crate::io::ParquetFile;
use crate::store::Stores;

/// Frames decoded ahead of the one the caller holds. Two keep both cores busy while
/// the caller's plan runs; more would only hold more memory.
const AHEAD: usize = 2;

/// The frames of one or more Parquet inputs (files, directories, globs, object-store
/// URLs) that share one schema, in input order. Each frame is one reader batch (up to
/// 16Ki rows); the frames' columns are those of the first input, in its order.
pub struct Frames {
    schema: SchemaRef,
    paths: Vec<PathBuf>,
    rx: Option<Receiver<Result<(usize, RecordBatch)>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    rows: u64,
}

impl Frames {
    /// Opens every input and checks their schemas agree before a row is read.
    pub fn open(stores: &Stores, inputs: &[String]) -> Result<Self> {
        Self::new(crate::io::open_all(stores, inputs)?)
    }

    /// Frames of inputs already opened (and checked) by the caller.
    pub fn new(files: Vec<ParquetFile>) -> Result<Self> {
        let Some(first) = files.first() else {
            return Err(Error::Usage(
                "no input files: name Parquet files, directories or globs".into(),
            ));
        };
        let schema = first.schema.clone();
        let paths = files.iter().map(|f| f.path.clone()).collect();
        let rows = files.iter().map(|f| f.rows).sum();
        let (tx, rx) = sync_channel(AHEAD);
        let reader = std::thread::Builder::new()
            .name("reclag-frames".into())
            .spawn(move || crate::io::read_ahead(files, tx))
            .map_err(|source| Error::Io {
                context: "starting the reader thread".into(),
                source,
            })?;
        Ok(Frames {
            schema,
            paths,
            rx: Some(rx),
            reader: Some(reader),
            rows,
        })
    }

    /// Rows in all inputs, from their footers (0 for an IPC stream).
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// A frame with no rows and the frames' schema: what a writer is opened with, so an
    /// input with no rows still gives an output with every column.
    pub fn empty(&self) -> Result<DataFrame> {
        to_frame(&RecordBatch::new_empty(self.schema.clone()))
    }

    fn frame(&self, i: usize, batch: RecordBatch) -> Result<DataFrame> {
        let path = &self.paths[i];
        // Later inputs may hold more columns, or the same in another order.
        let batch = if batch.schema_ref().fields() == self.schema.fields() {
            batch
        } else {
            let order = self
                .schema
                .fields()
                .iter()
                .map(|f| crate::io::column_index(batch.schema_ref(), f.name()))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(Error::in_file(path))?;
            batch.project(&order).map_err(|source| Error::Arrow {
                path: path.clone(),
                source,
            })?
        };
        to_frame(&batch).map_err(|e| match e {
            Error::Polars { context, source } => Error::Polars {
                context: format!("{}: {context}", path.display()),
                source,
            },
            e => e,
        })
    }
}

impl Iterator for Frames {
    type Item = Result<DataFrame>;

    fn next(&mut self) -> Option<Self::Item> {
        let item = self.rx.as_ref()?.recv().ok()?;
        let frame = item.and_then(|(i, batch)| self.frame(i, batch));
        if frame.is_err() {
            // The reader stops after its first error; so does the caller.
            self.rx = None;
        }
        Some(frame)
    }
}

impl Drop for Frames {
    fn drop(&mut self) {
        // Dropping the receiver makes the reader's next send fail, so it stops.
        self.rx = None;
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// A Polars frame of an Arrow batch. Each column crosses without a copy where Polars
/// keeps the Arrow layout (numbers, `FixedSizeList` as `Array`, string views); others
/// (`Utf8`, `List` with 32-bit offsets) are converted by Polars.
pub fn to_frame(batch: &RecordBatch) -> Result<DataFrame> {
    let columns = batch
        .schema_ref()
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(field, array)| {
            let context = || format!("column '{}' ({})", field.name(), field.data_type());
            let array =
                reclag_udfs::polars::bridge::to_polars(array).map_err(Error::polars(context()))?;
            Series::from_arrow(field.name().as_str().into(), array)
                .map(Column::from)
                .map_err(Error::polars(context()))
        })
        .collect::<Result<Vec<_>>>()?;
    DataFrame::new(batch.num_rows(), columns).map_err(Error::polars("building a frame"))
}
