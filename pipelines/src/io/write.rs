//! Outputs that appear whole or not at all: local files by rename, objects by a
//! completed upload, standard output as an Arrow IPC stream.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::{Schema, SchemaRef};
use parquet::arrow::{ArrowWriter, AsyncArrowWriter};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;

use crate::error::{Error, Result};
use crate::store::{Stores, block_on};

use super::*;

/// Every local output is written through it: see [`reclag::atomic`].
pub use reclag::atomic::Temp as AtomicFile;

/// A Parquet file written through an [`AtomicFile`].
pub struct AtomicParquet {
    out: AtomicFile,
    writer: ArrowWriter<File>,
}

impl AtomicParquet {
    pub fn create(target: &Path, schema: SchemaRef) -> Result<Self> {
        let (out, f) = AtomicFile::create(target)?;
        let writer = ArrowWriter::try_new(f, schema, Some(writer_props())).map_err(|source| {
            Error::Parquet {
                path: out.tmp().to_path_buf(),
                source,
            }
        })?;
        Ok(AtomicParquet { out, writer })
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let w = &mut self.writer;
        let e = |source| Error::Parquet {
            path: self.out.tmp().to_path_buf(),
            source,
        };
        let closed = w.flushed_row_groups().len();
        w.write(batch).map_err(e)?;
        if w.in_progress_size() > ROW_GROUP_BYTES {
            w.flush().map_err(e)?;
        }
        if w.flushed_row_groups().len() != closed {
            start_writeback(w.inner());
        }
        Ok(())
    }

    pub fn finish(self) -> Result<()> {
        let f = self.writer.into_inner().map_err(|source| Error::Parquet {
            path: self.out.tmp().to_path_buf(),
            source,
        })?;
        Ok(self.out.commit(&f)?)
    }
}

/// The output schema: the kept input columns followed by `extra`.
pub fn schema_with(base: &Schema, keep: &[usize], extra: Vec<arrow_schema::Field>) -> SchemaRef {
    let mut fields: Vec<arrow_schema::FieldRef> =
        keep.iter().map(|&i| base.fields()[i].clone()).collect();
    fields.extend(extra.into_iter().map(Arc::new));
    Arc::new(Schema::new(fields))
}

/// Starts writing the file's dirty pages to disk without waiting, so the `fsync`
/// that publishes the output waits only for what was written last. A hint: errors
/// are left to that `fsync`.
fn start_writeback(f: &File) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: the descriptor is open for the call's duration; the call only
        // schedules writeback of the file's pages.
        unsafe {
            libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = f;
}

fn writer_props() -> WriterProperties {
    // Level 1: the f64 outputs barely compress, and level 3 gave no smaller file
    // (24.83 MB against 24.79 MB at 1M rows) for a third more compression time.
    // A kept key column (an id, say) has a distinct value per row: the writer hashes
    // every value into a dictionary until the dictionary reaches this size, then
    // writes PLAIN. At the 1 MiB default that was 3 % of `reclag score` with 256k-row
    // row groups; columns of up to 8k distinct 64-bit values keep their dictionary.
    let mut b = WriterProperties::builder()
        .set_dictionary_page_size_limit(64 << 10)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(1).expect("valid level"),
        ));
    // Scores, energies and probabilities are all distinct: a dictionary attempt on them
    // only burns time (hashing every value) before the writer falls back to PLAIN.
    for c in ["reclag_score", "reclag_energy", "reclag_ood_probability"] {
        b = b.set_column_dictionary_enabled(ColumnPath::from(c), false);
    }
    b.build()
}

/// Where a result table goes. Every kind appears whole or not at all: a local file is
/// written under a temporary sibling and renamed; an object is one PUT or a multipart
/// upload that the store publishes only on completion (an unfinished one is never
/// visible, and a failed one is aborted: see [`crate::upload`]); stdout is an Arrow
/// IPC stream, for Unix pipelines.
/// CSV and NDJSON go to local files only.
pub enum Sink {
    Local(AtomicParquet),
    Remote(RemoteSink),
    Stdout(arrow_ipc::writer::StreamWriter<std::io::BufWriter<Box<dyn std::io::Write + Send>>>),
    Csv(Box<datafusion::arrow::csv::Writer<File>>, AtomicFile),
    Ndjson(
        datafusion::arrow::json::LineDelimitedWriter<File>,
        AtomicFile,
    ),
}

/// The file format of a result table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableFormat {
    Parquet,
    Csv,
    Ndjson,
}

fn text_err(e: arrow_schema::ArrowError) -> Error {
    Error::Usage(format!("writing the result: {e}"))
}

impl Sink {
    /// A Parquet output (an Arrow IPC stream for `-`).
    pub fn create(stores: &Stores, spec: &str, schema: SchemaRef) -> Result<Self> {
        Self::create_as(stores, spec, schema, TableFormat::Parquet)
    }

    /// An output of the given format.
    pub fn create_as(
        stores: &Stores,
        spec: &str,
        schema: SchemaRef,
        format: TableFormat,
    ) -> Result<Self> {
        if format != TableFormat::Parquet {
            let local = stores.locate(spec)?.local.filter(|_| spec != STDIO);
            let Some(target) = local else {
                return Err(Error::Usage(format!(
                    "{spec}: CSV and NDJSON results are written to local files only; write Parquet to object storage"
                )));
            };
            let (out, f) = AtomicFile::create(&target)?;
            return Ok(match format {
                TableFormat::Csv => {
                    Sink::Csv(Box::new(datafusion::arrow::csv::Writer::new(f)), out)
                }
                _ => Sink::Ndjson(datafusion::arrow::json::LineDelimitedWriter::new(f), out),
            });
        }
        if spec == STDIO {
            let w = arrow_ipc::writer::StreamWriter::try_new(
                std::io::BufWriter::new(stores.stdout()?),
                &schema,
            )
            .map_err(|source| Error::Arrow {
                path: "<stdout>".into(),
                source,
            })?;
            return Ok(Sink::Stdout(w));
        }
        let loc = stores.locate(spec)?;
        if let Some(p) = &loc.local {
            return Ok(Sink::Local(AtomicParquet::create(p, schema)?));
        }
        let path = loc.display_path();
        let upload = crate::upload::Upload::new(loc.store.clone(), loc.key.clone());
        let writer =
            AsyncArrowWriter::try_new(upload, schema, Some(writer_props())).map_err(|source| {
                Error::Parquet {
                    path: path.clone(),
                    source,
                }
            })?;
        Ok(Sink::Remote(RemoteSink {
            writer: Some(Box::new(writer)),
            path,
        }))
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        match self {
            Sink::Local(w) => w.write(batch),
            Sink::Remote(RemoteSink { writer, path }) => block_on(async {
                let Some(writer) = writer.as_mut() else {
                    return Err(parquet::errors::ParquetError::General(
                        "the output was already finished".into(),
                    ));
                };
                writer.write(batch).await?;
                if writer.in_progress_size() > ROW_GROUP_BYTES {
                    writer.flush().await?;
                }
                Ok(())
            })
            .map_err(|source| Error::Parquet {
                path: path.clone(),
                source,
            }),
            Sink::Stdout(w) => w.write(batch).map_err(stdout_err),
            Sink::Csv(w, _) => w.write(batch).map_err(text_err),
            Sink::Ndjson(w, _) => w.write(batch).map_err(text_err),
        }
    }

    pub fn finish(self) -> Result<()> {
        match self {
            Sink::Local(w) => w.finish(),
            Sink::Remote(mut r) => {
                let Some(mut w) = r.writer.take() else {
                    return Ok(());
                };
                block_on(async {
                    match w.finish().await {
                        Ok(_) => Ok(()),
                        Err(e) => {
                            w.into_inner().abort().await;
                            Err(e)
                        }
                    }
                })
                .map_err(|source| Error::Parquet {
                    path: r.path.clone(),
                    source,
                })
            }
            Sink::Stdout(mut w) => {
                w.finish().map_err(stdout_err)?;
                use std::io::Write;
                w.get_mut().flush().map_err(|source| Error::Io {
                    context: "writing to stdout".into(),
                    source,
                })
            }
            Sink::Csv(w, out) => Ok(out.commit(&w.into_inner())?),
            Sink::Ndjson(mut w, out) => {
                w.finish().map_err(text_err)?;
                Ok(out.commit(&w.into_inner())?)
            }
        }
    }
}

/// An object output: `writer` is taken when finished.
pub struct RemoteSink {
    writer: Option<Box<AsyncArrowWriter<crate::upload::Upload>>>,
    path: PathBuf,
}

impl Drop for RemoteSink {
    /// Dropped unfinished (a run that failed), the multipart upload is aborted.
    fn drop(&mut self) {
        if let Some(w) = self.writer.take() {
            block_on(w.into_inner().abort());
        }
    }
}

fn stdout_err(source: arrow_schema::ArrowError) -> Error {
    Error::Arrow {
        path: "<stdout>".into(),
        source,
    }
}
