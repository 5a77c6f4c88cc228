//! Parquet and Arrow IPC IO over any store: input expansion (files, prefixes, globs),
//! schema checks that fail before any row is read, streaming record batches, and
//! outputs that appear whole or not at all.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{Schema, SchemaRef};
use futures::StreamExt;
use object_store::path::Path as ObjPath;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::async_reader::{
    AsyncFileReader, ParquetRecordBatchStream, ParquetRecordBatchStreamBuilder,
};
use parquet::arrow::{ArrowWriter, AsyncArrowWriter, ProjectionMask};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;

use crate::error::{Error, Result};
use crate::store::{Location, Stores, block_on};
use reclag_parquet::{FastReader, Fused, Part};

pub const BATCH_ROWS: usize = 16 * 1024;

/// Decoded bytes per batch at most: wide rows get fewer rows per batch (16k rows of
/// 4096-d embeddings would be 256 MiB each, and a handful are in flight between
/// decoding, scoring and writing). Measured on 2048-d rows kept in the output, read
/// from one-row-group files: with 32 MiB batches peak RSS still rose with the input
/// (657 MiB at 64k rows, 1.1 GiB at 256k: freed batches fragment the heap, whose
/// blocks below 64 MiB the allocator settings keep); with 8 MiB it was 317, 327 and
/// 325 MiB at 16k, 64k and 256k rows, and no slower. A list column scored page by
/// page (see [`reclag_parquet::Fused`]) is never held, so it does not count.
pub const BATCH_BYTES: u64 = 8 << 20;

/// Decoded bytes of one row group above which the fast reader, which holds whole row
/// groups ([`ReadSettings::row_groups_in_flight`] decoding and one waiting), gives way to
/// parquet's reader, which streams pages into batches of [`BATCH_BYTES`]. A file
/// written as one huge row group (pyarrow's default is up to 1M rows: 16 GiB at
/// 4096-d) then costs a few batches of memory instead of the row group, at the
/// general reader's speed. Peak memory therefore depends on the row-group size up to
/// this bound and never on the input's length.
pub const FAST_ROW_GROUP_BYTES: u64 = 256 << 20;

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
    rows_within(bytes, rows)
}

/// Rows per batch when `rows` rows decode to `bytes`.
fn rows_within(bytes: u64, rows: u64) -> usize {
    let per_row = bytes.div_ceil(rows.max(1)).max(1);
    (BATCH_BYTES / per_row).clamp(1, BATCH_ROWS as u64) as usize
}

/// A row group is closed once its encoded size passes this, so writer memory stays
/// bounded however wide the rows (the writer's default closes only at 1M rows, which
/// is 2 GiB of 512-d embeddings).
pub const ROW_GROUP_BYTES: usize = 128 << 20;

/// Rows per output row group at most. The writer holds a row group's encoded pages
/// until it closes, so one 1M-row group of scores was written and synced only at the
/// end, after the scoring (about 40 ms of a 0.8 s run on one core); closed every 256k
/// rows, each is written (and its writeback started) while scoring goes on. Readers
/// such as DuckDB and Polars parallelise over row groups of this size.
pub const ROW_GROUP_ROWS: usize = 256 * 1024;

/// The spec for standard input / standard output (an Arrow IPC stream).
pub const STDIO: &str = "-";

/// Expands inputs into files: an object is taken as is, a prefix (directory)
/// contributes every `*.parquet` below it (sorted; names starting with `.` or `_`
/// skipped, as Spark and Hive writers use them for temporary files), and a key with
/// `*`, `?` or `[` is a glob (`**` crosses directories).
pub fn expand_inputs(stores: &Stores, inputs: &[String]) -> Result<Vec<Location>> {
    let mut out = Vec::new();
    for raw in inputs {
        if raw == STDIO {
            return Err(Error::Usage(
                "'-' (an Arrow IPC stream on stdin) must be the only input".into(),
            ));
        }
        let loc = stores.locate(raw)?;
        let key = loc.key.as_ref().to_string();
        if let Some(at) = key.find(['*', '?', '[']) {
            let prefix = key[..at].rfind('/').map_or("", |i| &key[..i]);
            let pattern = glob::Pattern::new(&key)
                .map_err(|e| Error::Usage(format!("input '{raw}' is not a valid glob: {e}")))?;
            let opts = glob::MatchOptions {
                require_literal_separator: true,
                ..Default::default()
            };
            let base = loc.child(ObjPath::from(prefix));
            let found: Vec<Location> = base
                .list()?
                .into_iter()
                .filter(|m| pattern.matches_with(m.location.as_ref(), opts))
                .map(|m| loc.child(m.location).with_size(m.size))
                .collect();
            if found.is_empty() {
                return Err(Error::Usage(format!("input '{raw}' matches no files")));
            }
            out.extend(found);
        } else if let Some(meta) = loc.head()? {
            out.push(loc.with_size(meta.size));
        } else {
            let found = parquet_files_below(&loc)?;
            if found.is_empty() {
                return Err(Error::Usage(
                    if loc.is_local() && !Path::new(raw).exists() {
                        format!(
                            "input '{raw}' does not exist (expected a Parquet file, a directory of them, or a glob like dir/*.parquet)"
                        )
                    } else if loc.is_local() {
                        format!("input directory '{raw}' contains no .parquet files")
                    } else {
                        format!(
                            "input '{raw}' does not exist: no object with that key and no .parquet objects below it"
                        )
                    },
                ));
            }
            out.extend(found);
        }
    }
    Ok(out)
}

/// The `.parquet` objects below a directory or prefix, sorted, leaving out hidden ones
/// (a `.` or `_` name anywhere below it: `_SUCCESS`, `.tmp` files, `_state.json` dirs).
pub fn parquet_files_below(loc: &Location) -> Result<Vec<Location>> {
    let prefix = loc.key.as_ref().to_string();
    Ok(loc
        .list()?
        .into_iter()
        .filter(|m| {
            let rel = m.location.as_ref()[prefix.len()..].trim_start_matches('/');
            m.location.extension() == Some("parquet")
                && !rel.split('/').any(|c| c.starts_with(['.', '_']))
        })
        .map(|m| loc.child(m.location).with_size(m.size))
        .collect())
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
            );
            let reader = FastReader::new(source, meta, plan, rgs, rows)
                .in_flight(settings.row_groups_in_flight);
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
    /// Row groups decoding at once in the fast reader: one per core by default.
    pub row_groups_in_flight: usize,
}

impl Default for ReadSettings {
    fn default() -> Self {
        ReadSettings {
            fast_decode: true,
            fused: true,
            row_groups_in_flight: reclag_parquet::default_in_flight(),
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
    fn into_fast(self) -> std::result::Result<(FastReader<T>, PathBuf), Batches<T>> {
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

pub fn column_index(schema: &Schema, column: &str) -> Result<usize, reclag::Error> {
    schema
        .index_of(column)
        .map_err(|_| reclag::Error::MissingColumn {
            column: column.into(),
            available: schema.fields().iter().map(|f| f.name().clone()).collect(),
        })
}

/// The array of `column` in a batch (the schema was checked when the file was opened).
pub fn batch_column<'b>(batch: &'b RecordBatch, column: &str, path: &Path) -> Result<&'b ArrayRef> {
    let i = column_index(batch.schema_ref(), column).map_err(Error::in_file(path))?;
    Ok(batch.column(i))
}

/// Decodes `files` in order, sending `(file index, batch)` to `tx`; meant for a thread
/// of its own, so decoding runs ahead of whatever consumes the batches (a bounded
/// channel limits how far). Stops after the first error, or when the receiver is
/// dropped (the consumer stopped on an error).
pub fn read_ahead(
    files: Vec<ParquetFile>,
    tx: std::sync::mpsc::SyncSender<Result<(usize, RecordBatch)>>,
) {
    let each = files.into_iter().map(|f| (f, None)).collect();
    read_ahead_each(each, None, |i, b| {
        let stop = b.is_err();
        tx.send(b.map(|b| (i, b.into_rows()))).is_ok() && !stop
    })
}

/// [`read_ahead`] with [`ParquetFile::read_fused`]. Consecutive inputs that take the
/// fast path are read as one chain (`FastReader::then`), so row groups keep decoding
/// on every core across file boundaries.
pub fn read_ahead_fused<T: Send + 'static>(
    files: Vec<ParquetFile>,
    fused: Option<Arc<dyn Fused<Output = T>>>,
    tx: std::sync::mpsc::SyncSender<Result<(usize, Part<T>)>>,
) {
    let each = files.into_iter().map(|f| (f, fused.clone())).collect();
    read_ahead_each(each, None, |i, b| {
        let stop = b.is_err();
        tx.send(b.map(|b| (i, b))).is_ok() && !stop
    })
}

/// A fused consumer of an input's embedding pages, whose results are `T`s.
pub type Consumer<T> = Arc<dyn Fused<Output = T>>;

/// [`read_ahead_fused`] with a consumer per input: a drift run reads several
/// partitions in one chain, each with its own window and worst rows. `send` gets each
/// batch or error with its input's index, in order, and returns `false` to stop; an
/// error is the last thing sent. `columns` projects every input (the file's column
/// indices; batches hold them in file order).
pub fn read_ahead_each<T: Send + 'static>(
    files: Vec<(ParquetFile, Option<Consumer<T>>)>,
    columns: Option<&[usize]>,
    mut send: impl FnMut(usize, Result<Part<T>>) -> bool,
) {
    let mut files = files.into_iter().enumerate();
    let open = |(f, fused): (ParquetFile, Option<Consumer<T>>)| f.read_fused(columns, fused);
    let mut carried: Option<(usize, Batches<T>)> = None;
    loop {
        let (i, batches) = match carried.take() {
            Some(next) => next,
            None => match files.next() {
                None => return,
                Some((i, f)) => match open(f) {
                    Ok(b) => (i, b),
                    Err(e) => {
                        send(i, Err(e));
                        return;
                    }
                },
            },
        };
        let (mut chain, path) = match batches.into_fast() {
            Ok(fast) => fast,
            Err(mut batches) => {
                while let Some(b) = batches.next_part() {
                    let stop = b.is_err();
                    if !send(i, b) || stop {
                        return;
                    }
                }
                continue;
            }
        };
        let (mut index, mut paths) = (vec![i], vec![path]);
        // An input that fails to open is reported after the chain's rows, in order.
        let mut failed = None;
        for (j, f) in files.by_ref() {
            match open(f).map(Batches::into_fast) {
                Ok(Ok((r, p))) => {
                    chain = chain.then(r);
                    index.push(j);
                    paths.push(p);
                }
                Ok(Err(b)) => {
                    carried = Some((j, b));
                    break;
                }
                Err(e) => {
                    failed = Some((j, e));
                    break;
                }
            }
        }
        loop {
            // The decoding itself runs on the reader's threads, which turn a panic
            // on a corrupt page into an error; nothing here decodes.
            let (k, item) = match chain.next_from() {
                None => break,
                Some((k, Ok(b))) => (k, Ok(b)),
                Some((k, Err(e))) => (
                    k,
                    Err(Error::Arrow {
                        path: paths[k].clone(),
                        source: arrow_schema::ArrowError::ExternalError(Box::new(e)),
                    }),
                ),
            };
            let stop = item.is_err();
            if !send(index[k], item) || stop {
                return;
            }
        }
        if let Some((j, e)) = failed {
            send(j, Err(e));
            return;
        }
    }
}

/// Opens every input and checks they share the first file's schema, so a mismatch is
/// reported before any row is processed. `-` alone reads an Arrow IPC stream on stdin.
pub fn open_all(stores: &Stores, inputs: &[String]) -> Result<Vec<ParquetFile>> {
    if inputs.len() == 1 && inputs[0] == STDIO {
        return Ok(vec![ParquetFile::stdin(stores)?]);
    }
    let files: Vec<ParquetFile> = expand_inputs(stores, inputs)?
        .iter()
        .map(ParquetFile::open)
        .collect::<Result<_>>()?;
    if let Some(first) = files.first() {
        for f in &files[1..] {
            for field in first.schema.fields() {
                match f.schema.field_with_name(field.name()) {
                    Ok(other) if other.data_type() == field.data_type() => {}
                    Ok(other) => {
                        return Err(Error::Usage(format!(
                            "{}: column '{}' has type {}, but {} has {}; all inputs must share one schema",
                            f.path.display(),
                            field.name(),
                            other.data_type(),
                            first.path.display(),
                            field.data_type()
                        )));
                    }
                    Err(_) => {
                        return Err(Error::Usage(format!(
                            "{}: column '{}' (present in {}) is missing; all inputs must share one schema",
                            f.path.display(),
                            field.name(),
                            first.path.display()
                        )));
                    }
                }
            }
            // Columns only a later file has would be dropped without a word (the
            // output schema is the first file's); the check above catches the
            // other order, so the rule does not depend on which file comes first.
            let extra: Vec<&str> = f
                .schema
                .fields()
                .iter()
                .filter(|x| first.schema.field_with_name(x.name()).is_err())
                .map(|x| x.name().as_str())
                .collect();
            if !extra.is_empty() {
                return Err(Error::Usage(format!(
                    "{}: column(s) {} are not in {}; all inputs must share one schema \
                     (score the files separately, or use `reclag sql`, which fills a \
                     column a file lacks with nulls)",
                    f.path.display(),
                    extra
                        .iter()
                        .map(|c| format!("'{c}'"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    first.path.display()
                )));
            }
        }
    }
    Ok(files)
}

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
pub enum Sink {
    Local(AtomicParquet),
    Remote(RemoteSink),
    Stdout(arrow_ipc::writer::StreamWriter<std::io::BufWriter<Box<dyn std::io::Write + Send>>>),
}

impl Sink {
    pub fn create(stores: &Stores, spec: &str, schema: SchemaRef) -> Result<Self> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreEnv;

    #[test]
    fn expands_dirs_and_globs_skipping_hidden_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for f in [
            "a.parquet",
            "b.parquet",
            "_tmp.parquet",
            "x.csv",
            "p=1/c.parquet",
            ".hidden/d.parquet",
        ] {
            let p = d.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"").unwrap();
        }
        let stores = Stores::new(StoreEnv::default());
        let names = |spec: &str| -> Vec<String> {
            expand_inputs(&stores, &[spec.to_string()])
                .unwrap()
                .iter()
                .map(|l| l.key.as_ref().rsplit('/').next().unwrap().to_string())
                .collect()
        };
        let root = d.to_string_lossy().to_string();
        assert_eq!(names(&root), ["a.parquet", "b.parquet", "c.parquet"]);
        assert_eq!(
            names(&format!("{root}/*.parquet")),
            ["_tmp.parquet", "a.parquet", "b.parquet"]
        );
        assert_eq!(names(&format!("{root}/p=*/*.parquet")), ["c.parquet"]);
        assert_eq!(names(&format!("{root}/**/c.parquet")), ["c.parquet"]);
        let e = expand_inputs(&stores, &[format!("{root}/nope*.parquet")]).unwrap_err();
        assert!(e.to_string().contains("matches no files"), "{e}");
        let e = expand_inputs(&stores, &[format!("{root}/missing")]).unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
    }

    /// Rows `start..start + n` of an (id, embedding) table, as a file of `rg`-row
    /// row groups; with `nulls`, every seventh embedding is null, so each row group
    /// falls back to the general reader inside the fast one.
    fn part(dir: &Path, name: &str, start: usize, n: usize, rg: usize, nulls: bool) -> String {
        use arrow_array::{Array, FixedSizeListArray, Float32Array, Int64Array};
        let dim = 6;
        let item = Arc::new(arrow_schema::Field::new(
            "item",
            arrow_schema::DataType::Float32,
            true,
        ));
        let values =
            Float32Array::from_iter_values((start * dim..(start + n) * dim).map(|i| i as f32));
        let valid = nulls.then(|| (0..n).map(|r| r % 7 != 3).collect::<Vec<_>>().into());
        let list = FixedSizeListArray::new(item, dim as i32, Arc::new(values), valid);
        let id = Int64Array::from_iter_values((start..start + n).map(|i| i as i64));
        let schema = Arc::new(Schema::new(vec![
            arrow_schema::Field::new("id", arrow_schema::DataType::Int64, false),
            arrow_schema::Field::new("embedding", list.data_type().clone(), true),
        ]));
        let b = RecordBatch::try_new(schema, vec![Arc::new(id), Arc::new(list)]).unwrap();
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(rg))
            .set_dictionary_enabled(false)
            .set_compression(Compression::SNAPPY)
            .build();
        let path = dir.join(name);
        let mut w =
            ArrowWriter::try_new(File::create(&path).unwrap(), b.schema(), Some(props)).unwrap();
        w.write(&b).unwrap();
        w.close().unwrap();
        path.to_string_lossy().into_owned()
    }

    /// Fast-path files are read as one chain across file boundaries; row groups the
    /// fast path declines (nulls) are read by the general reader within the chain, and
    /// every batch keeps its file's index and order. A damaged file is reported after
    /// the rows before it.
    #[test]
    fn inputs_read_ahead_in_order_across_files() {
        use arrow_array::cast::AsArray;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let specs = [
            part(d, "a.parquet", 0, 500, 200, false),
            part(d, "b.parquet", 500, 150, 200, false),
            part(d, "c.parquet", 650, 300, 100, true),
            part(d, "d.parquet", 950, 50, 200, false),
            part(d, "e.parquet", 1000, 700, 300, false),
        ];
        let stores = Stores::new(StoreEnv::default());
        let read = |specs: &[String]| {
            let files = open_all(&stores, specs).unwrap();
            let (tx, rx) = std::sync::mpsc::sync_channel(2);
            let h = std::thread::spawn(move || read_ahead(files, tx));
            let got: Vec<Result<(usize, RecordBatch)>> = rx.into_iter().collect();
            h.join().unwrap();
            got
        };
        let mut ids = Vec::new();
        let mut last_file = 0;
        for item in read(&specs) {
            let (i, b) = item.unwrap();
            assert!(i >= last_file, "file {i} after file {last_file}");
            last_file = i;
            let bounds = [0, 500, 650, 950, 1000, 1700];
            for &v in b
                .column(0)
                .as_primitive::<arrow_array::types::Int64Type>()
                .values()
            {
                assert!(
                    (bounds[i]..bounds[i + 1]).contains(&(v as usize)),
                    "id {v} in file {i}"
                );
                ids.push(v);
            }
        }
        assert_eq!(ids, (0..1700).collect::<Vec<i64>>());
        // Damaged pages in the second file: the rows before them, then an error that
        // names it, and nothing after.
        let mut bytes = std::fs::read(&specs[1]).unwrap();
        let n = bytes.len();
        bytes[4..n / 2].fill(0xff);
        std::fs::write(&specs[1], &bytes).unwrap();
        let got = read(&specs);
        let (last, rows) = got.split_last().unwrap();
        let e = last.as_ref().unwrap_err().to_string();
        assert!(e.contains("b.parquet"), "{e}");
        let mut ids: Vec<i64> = Vec::new();
        for item in rows {
            let (i, b) = item.as_ref().unwrap();
            assert!(*i <= 1);
            ids.extend(
                b.column(0)
                    .as_primitive::<arrow_array::types::Int64Type>()
                    .values(),
            );
        }
        assert_eq!(ids, (0..ids.len() as i64).collect::<Vec<_>>());
        assert!(ids.len() >= 500, "file a's rows come first");
    }
}
