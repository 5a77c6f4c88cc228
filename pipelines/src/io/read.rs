//! Reading one input: Parquet (the fast reader where it applies, parquet's readers
//! otherwise, local or from a store) or an Arrow IPC stream, as batches or as what a
//! fused consumer made of them.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use futures::StreamExt;
use object_store::path::Path as ObjPath;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::async_reader::{
    AsyncFileReader, ParquetRecordBatchStream, ParquetRecordBatchStreamBuilder,
};
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};

use crate::error::{Error, Result};
use crate::store::{Location, Stores, block_on};
use reclag_parquet::{FastReader, Fused, Part};

use super::*;

/// Rows per batch for the projected root columns of a file (all when `None`): the
/// mean uncompressed bytes per row, from the footer, bounded by [`BATCH_BYTES`].
fn batch_rows(md: &ParquetMetaData, columns: Option<&[usize]>) -> usize {
    let pschema = md.file_metadata().schema_descr();
    let (mut bytes, mut rows) = (0u64, 0u64);
    for rg in md.row_groups() {
        rows += rg.num_rows().max(0) as u64;
        for (c, col) in rg.columns().iter().enumerate() {
            let root = pschema.get_column_root_idx(c);
            if columns.is_none_or(|cols| cols.contains(&root)) {
                bytes += col.uncompressed_size().max(0) as u64;
            }
        }
    }
    rows_within(bytes, rows, BATCH_BYTES)
}

/// Rows per batch when `rows` rows decode to `bytes`, at most `budget` bytes a batch.
fn rows_within(bytes: u64, rows: u64, budget: u64) -> usize {
    let per_row = bytes.div_ceil(rows.max(1)).max(1);
    (budget / per_row).clamp(1, BATCH_ROWS as u64) as usize
}

/// An input table opened for streaming, with its Arrow schema and (for Parquet) row
/// count known before any row is read.
pub struct ParquetFile {
    /// The file or URL, for messages.
    pub path: PathBuf,
    pub schema: SchemaRef,
    /// 0 where unknown (an IPC stream).
    pub rows: u64,
    source: Source,
    /// Read only these row groups (all when `None`).
    row_groups: Option<Vec<usize>>,
}

enum Source {
    /// Local files use the synchronous reader, which reads pages on demand; the fast
    /// list path opens the file by its path on each decoding thread.
    Local(ParquetRecordBatchReaderBuilder<File>, PathBuf),
    /// Remote objects are fetched a row group at a time (the store and key are kept for
    /// the fast list path, which fetches its own ranges).
    Remote(
        ParquetRecordBatchStreamBuilder<StoreReader>,
        Arc<dyn object_store::ObjectStore>,
        ObjPath,
    ),
    Ipc(arrow_ipc::reader::StreamReader<BufReader<Box<dyn std::io::Read + Send>>>),
}

impl ParquetFile {
    pub fn open(loc: &Location) -> Result<Self> {
        let path = loc.display_path();
        if let Some(local) = &loc.local {
            let f = File::open(local).map_err(|source| Error::Io {
                context: format!("opening {}", path.display()),
                source,
            })?;
            let builder = guard(&path, || {
                ParquetRecordBatchReaderBuilder::try_new(f).map_err(|source| Error::Parquet {
                    path: path.clone(),
                    source,
                })
            })?;
            let schema = builder.schema().clone();
            let rows = builder.metadata().file_metadata().num_rows().max(0) as u64;
            return Ok(ParquetFile {
                path,
                schema,
                rows,
                source: Source::Local(builder, local.clone()),
                row_groups: None,
            });
        }
        let reader = StoreReader {
            store: loc.store.clone(),
            key: loc.key.clone(),
            size: loc.size,
        };
        let builder = guard(&path, || {
            block_on(ParquetRecordBatchStreamBuilder::new(reader)).map_err(|source| {
                Error::Parquet {
                    path: path.clone(),
                    source,
                }
            })
        })?;
        let schema = builder.schema().clone();
        let rows = builder.metadata().file_metadata().num_rows().max(0) as u64;
        Ok(ParquetFile {
            path,
            schema,
            rows,
            source: Source::Remote(builder, loc.store.clone(), loc.key.clone()),
            row_groups: None,
        })
    }

    /// An Arrow IPC stream on standard input; its schema is read from the stream head.
    pub fn stdin(stores: &Stores) -> Result<Self> {
        let path = PathBuf::from("<stdin>");
        let reader = arrow_ipc::reader::StreamReader::try_new(BufReader::new(stores.stdin()?), None)
            .map_err(|e| {
                Error::Usage(format!(
                    "<stdin>: not an Arrow IPC stream ({e}); pipe in the output of a tool that writes the Arrow IPC stream format, e.g. `reclag score ... --output -`"
                ))
            })?;
        Ok(ParquetFile {
            path,
            schema: reader.schema(),
            rows: 0,
            source: Source::Ipc(reader),
            row_groups: None,
        })
    }

    pub fn column_index(&self, column: &str) -> Result<usize> {
        column_index(&self.schema, column).map_err(Error::in_file(&self.path))
    }

    /// Checks from the footer alone that the file has what scoring needs: the
    /// embedding column, of a list type with the model's dimension, and the group
    /// column. The message names the file and lists its columns.
    pub fn check_scoring_columns(
        &self,
        dim: usize,
        embedding: &str,
        group: Option<&str>,
    ) -> std::result::Result<(), String> {
        let columns = || {
            self.schema
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let path = self.path.display();
        let Ok(field) = self.schema.field_with_name(embedding) else {
            return Err(format!(
                "{path}: no embedding column '{embedding}' (columns: {})",
                columns()
            ));
        };
        reclag::arrow::check_embedding_type(field.data_type(), embedding, Some(dim))
            .map_err(|e| format!("{path}: {e}"))?;
        match group {
            Some(g) if self.schema.field_with_name(g).is_err() => Err(format!(
                "{path}: no group column '{g}' (columns: {})",
                columns()
            )),
            _ => Ok(()),
        }
    }

    /// The Parquet footer (`None` for an IPC stream).
    pub fn metadata(
        &self,
    ) -> Option<(&ParquetMetaData, &parquet::schema::types::SchemaDescriptor)> {
        match &self.source {
            Source::Local(b, _) => Some((b.metadata().as_ref(), b.parquet_schema())),
            Source::Remote(b, ..) => Some((b.metadata().as_ref(), b.parquet_schema())),
            Source::Ipc(_) => None,
        }
    }

    /// Restricts reading to these row groups (in the given order); a time-window
    /// drift job reads only the row groups that hold its window.
    pub fn with_row_groups(mut self, row_groups: Vec<usize>) -> Self {
        self.row_groups = Some(row_groups);
        self
    }

    /// Streams batches of the given root columns (all when `None`).
    pub fn read(self, columns: Option<&[usize]>) -> Result<Batches> {
        self.read_fused(columns, None)
    }

    /// [`ParquetFile::read`], handing the embedding to `fused` page by page where the
    /// fast list path applies: those row groups come back as `fused`'s batches, the
    /// others as read.
    pub fn read_fused<T: Send + 'static>(
        self,
        columns: Option<&[usize]>,
        fused: Option<Arc<dyn Fused<Output = T>>>,
    ) -> Result<Batches<T>> {
        let path = self.path;
        let rgs = self.row_groups;
        let settings = read_settings();
        // The fast reader where the plan allows, for local files and objects alike.
        let fast = |md: &Arc<ParquetMetaData>,
                    source: reclag_parquet::Source,
                    rgs: Option<Vec<usize>>|
         -> Result<Option<Inner<T>>> {
            if !settings.fast_decode {
                return Ok(None);
            }
            let meta = ArrowReaderMetadata::try_new(md.clone(), ArrowReaderOptions::new())
                .map_err(parquet_err(&path))?;
            let Some(plan) = reclag_parquet::plan(&meta, columns) else {
                return Ok(None);
            };
            let plan: reclag_parquet::Plan<T> = match &fused {
                Some(f) => plan.with_fused(f.clone()),
                None => plan.without_consumer(),
            };
            let chosen: Vec<usize> = rgs
                .clone()
                .unwrap_or_else(|| (0..md.num_row_groups()).collect());
            let held: Vec<u64> = chosen
                .iter()
                .map(|&rg| plan.row_group_bytes(&meta, rg))
                .collect();
            if held.iter().any(|&b| b > FAST_ROW_GROUP_BYTES) {
                return Ok(None);
            }
            let rows = rows_within(
                held.iter().sum(),
                chosen
                    .iter()
                    .map(|&rg| md.row_group(rg).num_rows().max(0) as u64)
                    .sum(),
                FAST_BATCH_BYTES,
            );
            let mut reader = FastReader::new(source, meta, plan, rgs, rows);
            if let Some(n) = settings.row_groups_in_flight {
                reader = reader.in_flight(n);
            }
            Ok(Some(Inner::Fast(reader)))
        };
        let inner = match self.source {
            Source::Local(builder, local) => {
                let source = reclag_parquet::Source::Local(local);
                match fast(builder.metadata(), source, rgs.clone())? {
                    Some(f) => f,
                    None => Inner::Local(guard(&path, || {
                        configure(builder, columns, rgs)
                            .build()
                            .map_err(parquet_err(&path))
                    })?),
                }
            }
            Source::Remote(builder, store, key) => {
                let source = reclag_parquet::Source::Ranges(Arc::new(StoreRanges { store, key }));
                match fast(builder.metadata(), source, rgs.clone())? {
                    Some(f) => f,
                    None => Inner::Remote(guard(&path, || {
                        configure(builder, columns, rgs)
                            .build()
                            .map_err(parquet_err(&path))
                    })?),
                }
            }
            Source::Ipc(r) => Inner::Ipc(r, columns.map(<[usize]>::to_vec)),
        };
        Ok(Batches { inner, path })
    }
}

/// Byte ranges of one object for the async Parquet reader: the footer first, then the
/// projected column chunks of one row group at a time (coalesced by the store).
///
/// Written here rather than parquet's `ParquetObjectReader`, which parquet 59.3
/// deprecates in favour of exactly this ("implement `AsyncFileReader` directly",
/// apache/arrow-rs#10308); it also keeps the size a listing already returned, so an
/// object listed by a prefix or glob costs no HEAD.
struct StoreReader {
    store: Arc<dyn object_store::ObjectStore>,
    key: ObjPath,
    size: Option<u64>,
}

fn store_err(e: object_store::Error) -> parquet::errors::ParquetError {
    parquet::errors::ParquetError::External(Box::new(e))
}

impl AsyncFileReader for StoreReader {
    fn get_bytes(
        &mut self,
        range: std::ops::Range<u64>,
    ) -> futures::future::BoxFuture<'_, parquet::errors::Result<bytes::Bytes>> {
        Box::pin(async move {
            object_store::ObjectStoreExt::get_range(self.store.as_ref(), &self.key, range)
                .await
                .map_err(store_err)
        })
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<std::ops::Range<u64>>,
    ) -> futures::future::BoxFuture<'_, parquet::errors::Result<Vec<bytes::Bytes>>> {
        Box::pin(async move {
            self.store
                .get_ranges(&self.key, &ranges)
                .await
                .map_err(store_err)
        })
    }

    fn get_metadata<'a>(
        &'a mut self,
        _options: Option<&'a ArrowReaderOptions>,
    ) -> futures::future::BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        Box::pin(async move {
            let size = match self.size {
                Some(s) => s,
                None => {
                    let meta = object_store::ObjectStoreExt::head(self.store.as_ref(), &self.key)
                        .await
                        .map_err(store_err)?;
                    self.size = Some(meta.size);
                    meta.size
                }
            };
            let reader = ParquetMetaDataReader::new().with_prefetch_hint(Some(64 << 10));
            Ok(Arc::new(reader.load_and_finish(self, size).await?))
        })
    }
}

/// How inputs are decoded, for the whole process. The binary sets it once from its
/// flags and environment ([`configure_reading`]); a program that embeds the crate gets
/// the defaults or sets it itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadSettings {
    /// The fast path for `FixedSizeList<Float32>` columns (on by default; off reads
    /// every column with parquet's general reader, for comparison).
    pub fast_decode: bool,
    /// Whether `reclag score` and drift runs score pages as they are decoded (see
    /// [`reclag_parquet::Fused`]) rather than from whole Arrow columns.
    pub fused: bool,
    /// Row groups decoding at once in the fast reader. `None` (the default): the
    /// reader's own rule, [`reclag_parquet::default_in_flight`].
    pub row_groups_in_flight: Option<usize>,
}

impl Default for ReadSettings {
    fn default() -> Self {
        ReadSettings {
            fast_decode: true,
            fused: true,
            row_groups_in_flight: None,
        }
    }
}

static READ_SETTINGS: std::sync::OnceLock<ReadSettings> = std::sync::OnceLock::new();

/// Sets how this process decodes inputs; the first call wins (`false` when a setting
/// was already in force, which it then keeps).
pub fn configure_reading(settings: ReadSettings) -> bool {
    READ_SETTINGS.set(settings).is_ok()
}

/// The settings in force ([`configure_reading`], else the defaults).
pub fn read_settings() -> ReadSettings {
    *READ_SETTINGS.get_or_init(ReadSettings::default)
}

/// Byte ranges of one object for the fast reader, fetched on its decoding threads.
struct StoreRanges {
    store: Arc<dyn object_store::ObjectStore>,
    key: ObjPath,
}

impl reclag_parquet::FetchRanges for StoreRanges {
    fn fetch(&self, ranges: &[std::ops::Range<u64>]) -> reclag_parquet::Result<Vec<bytes::Bytes>> {
        block_on(self.store.get_ranges(&self.key, ranges)).map_err(store_err)
    }
}

/// Batch size, column projection and row groups, the same for local and remote
/// readers.
fn configure<T>(
    builder: parquet::arrow::arrow_reader::ArrowReaderBuilder<T>,
    columns: Option<&[usize]>,
    row_groups: Option<Vec<usize>>,
) -> parquet::arrow::arrow_reader::ArrowReaderBuilder<T> {
    let rows = batch_rows(builder.metadata(), columns);
    let mut b = builder.with_batch_size(rows);
    if let Some(rgs) = row_groups {
        b = b.with_row_groups(rgs);
    }
    match columns {
        Some(cols) => {
            let mask = ProjectionMask::roots(b.parquet_schema(), cols.iter().copied());
            b.with_projection(mask)
        }
        None => b,
    }
}

fn parquet_err(path: &Path) -> impl FnOnce(parquet::errors::ParquetError) -> Error + '_ {
    move |source| Error::Parquet {
        path: path.to_path_buf(),
        source,
    }
}

enum Inner<T> {
    Local(ParquetRecordBatchReader),
    Fast(FastReader<T>),
    Remote(ParquetRecordBatchStream<StoreReader>),
    Ipc(
        arrow_ipc::reader::StreamReader<BufReader<Box<dyn std::io::Read + Send>>>,
        Option<Vec<usize>>,
    ),
}

/// Record batches of one input, or what a fused consumer made of its row groups
/// ([`Part`]). Decoding errors and decoder panics on corrupt pages both come out as
/// errors naming the file.
pub struct Batches<T = std::convert::Infallible> {
    inner: Inner<T>,
    path: PathBuf,
}

impl<T: Send + 'static> Batches<T> {
    /// The fast reader and the file's path, when this input took the fast path.
    // Called once per input and moved straight on: the size of the value is no cost.
    #[allow(clippy::result_large_err)]
    pub(super) fn into_fast(self) -> std::result::Result<(FastReader<T>, PathBuf), Batches<T>> {
        match self.inner {
            Inner::Fast(r) => Ok((r, self.path)),
            inner => Err(Batches {
                inner,
                path: self.path,
            }),
        }
    }

    /// The next batch, or a fused consumer's result for the next row group.
    pub fn next_part(&mut self) -> Option<Result<Part<T>>> {
        let path = &self.path;
        let inner = &mut self.inner;
        let ext =
            |e: parquet::errors::ParquetError| arrow_schema::ArrowError::ExternalError(Box::new(e));
        let next = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match inner {
            Inner::Local(r) => r.next().map(|r| r.map(Part::Rows)),
            Inner::Fast(r) => r.next().map(|r| r.map_err(ext)),
            Inner::Remote(s) => block_on(s.next()).map(|r| r.map(Part::Rows).map_err(ext)),
            Inner::Ipc(r, cols) => r.next().map(|b| {
                match cols {
                    Some(c) => b.and_then(|b| b.project(c)),
                    None => b,
                }
                .map(Part::Rows)
            }),
        }));
        match next {
            Ok(None) => None,
            Ok(Some(r)) => Some(r.map_err(|source| Error::Arrow {
                path: path.clone(),
                source,
            })),
            Err(_) => Some(Err(corrupt(
                path,
                "a data page could not be decoded".into(),
            ))),
        }
    }
}

impl Iterator for Batches {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_part().map(|r| r.map(Part::into_rows))
    }
}

fn corrupt(path: &Path, detail: String) -> Error {
    Error::Usage(format!(
        "{}: corrupt Parquet file ({detail}); re-export or restore it",
        path.display()
    ))
}

fn guard<T>(path: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    reclag::format::guard_decode(|msg| corrupt(path, msg), f)
}
