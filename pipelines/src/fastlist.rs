//! A fast path for the column that dominates every embedding table:
//! `FixedSizeList<Float32, d>` stored PLAIN (after the few pages that index a
//! dictionary, where the writer started with one). The general Arrow reader rebuilds the list
//! from its repetition and definition levels one value at a time, which `perf` showed
//! to be most of the decode time. Here each page's levels are only *checked* run by
//! run (a list always starts at a multiple of `d`; no value is null), and the values
//! are copied straight from the decompressed page into one buffer that the batches
//! share without copies. Other columns go through the general reader, and so does any
//! row group this path cannot prove it handles exactly (a null, an index outside the
//! dictionary, an unexpected encoding or level pattern): the fast path returns `None`
//! and nothing is guessed.
//!
//! The next row group is decoded on a second thread while the current one is consumed,
//! so decoding uses two cores where the general reader uses one.

use std::collections::VecDeque;
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use arrow_array::{ArrayRef, FixedSizeListArray, Float32Array, RecordBatch};
use arrow_buffer::ScalarBuffer;
use arrow_schema::{DataType, Field, SchemaRef};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ParquetRecordBatchReaderBuilder};
use parquet::basic::{Compression, Encoding};
use parquet::column::page::Page;
use parquet::file::metadata::ColumnChunkMetaData;
use parquet::file::reader::ChunkReader;
use parquet::file::serialized_reader::SerializedPageReader;

/// A row group's embedding buffer larger than this goes through the general reader,
/// which streams, so memory stays bounded for files with huge row groups.
const MAX_FAST_BYTES: usize = 256 << 20;

/// Row-group buffers kept for reuse. Keeping a buffer never raises peak memory (it was
/// live a moment ago), so the bound is only a backstop: it must cover every buffer in
/// flight (being decoded, decoded ahead, queued, being scored), or each row group frees
/// one and faults a fresh one in, which `perf` showed as a quarter of `reclag score`
/// spent zeroing pages.
const POOL: usize = 8;

/// A `FixedSizeList<Float32>` root column the fast path can take.
#[derive(Clone, Debug)]
struct ListColumn {
    root: usize,
    leaf: usize,
    dim: usize,
    item: Arc<Field>,
    max_def: i16,
}

/// The item field and size of a column type the fast path can take:
/// `FixedSizeList<Float32, d>` with `d > 0`.
pub fn float_list(t: &DataType) -> Option<(&Arc<Field>, usize)> {
    match t {
        DataType::FixedSizeList(item, dim)
            if item.data_type() == &DataType::Float32 && *dim > 0 =>
        {
            Some((item, *dim as usize))
        }
        _ => None,
    }
}

/// The columns of a file the fast path applies to, or `None` when none does.
pub fn plan(meta: &ArrowReaderMetadata, columns: Option<&[usize]>) -> Option<Plan> {
    let schema = meta.schema();
    let pschema = meta.metadata().file_metadata().schema_descr();
    let roots: Vec<usize> = match columns {
        Some(c) => {
            let mut c = c.to_vec();
            c.sort_unstable();
            c.dedup();
            c
        }
        None => (0..schema.fields().len()).collect(),
    };
    let mut lists = vec![];
    for &root in &roots {
        let Some((item, dim)) = float_list(schema.field(root).data_type()) else {
            continue;
        };
        // The root's single leaf.
        let leaves: Vec<usize> = (0..pschema.num_columns())
            .filter(|&i| pschema.get_column_root_idx(i) == root)
            .collect();
        let [leaf] = leaves[..] else { continue };
        let desc = pschema.column(leaf);
        if desc.max_rep_level() != 1 {
            continue;
        }
        lists.push(ListColumn {
            root,
            leaf,
            dim,
            item: item.clone(),
            max_def: desc.max_def_level(),
        });
    }
    if lists.is_empty() {
        return None;
    }
    let others: Vec<usize> = roots
        .iter()
        .copied()
        .filter(|r| !lists.iter().any(|l| l.root == *r))
        .collect();
    let projected = Arc::new(schema.project(&roots).ok()?);
    Some(Plan {
        roots,
        lists,
        others,
        projected,
        fused: None,
    })
}

pub struct Plan {
    roots: Vec<usize>,
    lists: Vec<ListColumn>,
    others: Vec<usize>,
    projected: SchemaRef,
    fused: Option<FusedPlan>,
}

/// The consumer, which of `lists` it takes, and the schema of the batches it is
/// handed: every projected column but that list.
struct FusedPlan {
    consumer: Arc<dyn Fused>,
    list: usize,
    given: SchemaRef,
}

impl Plan {
    /// Hands the rows of the list column named by [`Fused::column`] to `fused` page
    /// by page instead of materialising them; other list columns are decoded as usual
    /// and handed over with the rest. Ignored where that column is not a fast list.
    pub fn with_fused(mut self, fused: Arc<dyn Fused>) -> Self {
        let name = fused.column().to_string();
        let Some(list) = self
            .lists
            .iter()
            .position(|l| self.projected.field(self.root_pos(l.root)).name() == &name)
        else {
            return self;
        };
        let keep: Vec<usize> = (0..self.roots.len())
            .filter(|&i| self.roots[i] != self.lists[list].root)
            .collect();
        let Ok(given) = self.projected.project(&keep) else {
            return self;
        };
        self.fused = Some(FusedPlan {
            consumer: fused,
            list,
            given: Arc::new(given),
        });
        self
    }

    /// The bytes row group `rg` decodes to under this plan: the uncompressed size of
    /// every projected leaf column but a fused list's, which is consumed page by page
    /// and never held. The reader holds this much per row group it decodes, times
    /// [`IN_FLIGHT`] and one more waiting to be consumed.
    pub fn row_group_bytes(&self, meta: &ArrowReaderMetadata, rg: usize) -> u64 {
        let md = meta.metadata().row_group(rg);
        let pschema = meta.metadata().file_metadata().schema_descr();
        let fused_leaf = self.fused.as_ref().map(|f| self.lists[f.list].leaf);
        (0..md.num_columns())
            .filter(|&c| self.roots.contains(&pschema.get_column_root_idx(c)))
            .filter(|&c| Some(c) != fused_leaf)
            .map(|c| md.column(c).uncompressed_size().max(0) as u64)
            .sum()
    }

    /// The place of file column `root` among the projected columns.
    fn root_pos(&self, root: usize) -> usize {
        self.roots.iter().position(|&r| r == root).unwrap_or(0)
    }
}

/// A consumer of a row group's embedding rows *while they are in cache*: each page's
/// rows are handed over right after they are decompressed, so a scorer reads them from
/// L2 instead of from a row-group buffer in DRAM, and no such buffer is filled.
pub trait Fused: Send + Sync {
    /// The list column whose pages it consumes.
    fn column(&self) -> &str;
    /// Called with the row group's other projected columns, in order (all rows of the
    /// group, other list columns included); `None` declines, and the row group is read
    /// the usual way.
    fn start(&self, others: &[RecordBatch]) -> Option<Box<dyn FusedGroup>>;
}

/// One row group's consumer (see [`Fused`]).
pub trait FusedGroup: Send {
    /// The next whole rows of the list column, in order, row-major.
    fn rows(&mut self, values: &[f32]);
    /// The next whole rows as little-endian f32 bytes, row `k` starting at byte
    /// `at[k]` of `buf`, at any alignment: a page read where it was decompressed.
    fn rows_at(&mut self, buf: &[u8], at: &[usize]);
    /// The row group's batches, built from what was consumed and the other columns.
    fn finish(self: Box<Self>, others: Vec<RecordBatch>) -> Decoded;
}

pub type Decoded = parquet::errors::Result<Vec<RecordBatch>>;

/// Recycles row-group buffers. A fresh 128 MiB buffer per row group cost more in page
/// faults (the kernel zeroing new pages) than the copy into it: `perf` put a third of
/// decode time there. Arrow frees a buffer through its owner, which hands it back.
#[derive(Default)]
struct Pool {
    free: std::sync::Mutex<Vec<Vec<f32>>>,
}

impl Pool {
    /// A free buffer of at least `cap` values, else a new one. A smaller free buffer
    /// (another list column's, say) is left for a request it fits: growing it would
    /// allocate fresh pages, the cost the pool exists to avoid.
    fn take(&self, cap: usize) -> Vec<f32> {
        let reused = self.free.lock().ok().and_then(|mut f| {
            let at = f.iter().position(|v| v.capacity() >= cap)?;
            Some(f.swap_remove(at))
        });
        match reused {
            Some(mut v) => {
                v.clear();
                v
            }
            None => {
                let mut v = Vec::with_capacity(cap);
                crate::alloc::huge_pages(&mut v);
                v
            }
        }
    }
}

/// The owner of a pooled buffer while Arrow arrays use it.
struct Lease {
    vec: Vec<f32>,
    pool: Arc<Pool>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.vec);
        if let Ok(mut f) = self.pool.free.lock()
            && f.len() < POOL
        {
            f.push(v);
        }
    }
}

fn leased(vec: Vec<f32>, pool: &Arc<Pool>) -> ScalarBuffer<f32> {
    let len = vec.len();
    let ptr = std::ptr::NonNull::new(vec.as_ptr() as *mut u8).expect("a Vec's pointer is non-null");
    let owner = Arc::new(Lease {
        vec,
        pool: pool.clone(),
    });
    // SAFETY: `ptr` points at `len` initialised f32s (4·len bytes, aligned for f32)
    // owned by `owner`'s Vec, whose heap allocation does not move when the Vec does
    // and is not touched again until the owner drops, after the last Buffer does.
    let buffer = unsafe { arrow_buffer::Buffer::from_custom_allocation(ptr, len * 4, owner) };
    ScalarBuffer::new(buffer, 0, len)
}

/// Where the fast path reads a file's bytes from.
#[derive(Clone)]
pub enum FastSource {
    /// Each decoding thread opens its own handle: clones of one `File` share a seek
    /// offset, and the Parquet reader seeks.
    Local(PathBuf),
    /// An object: each row group's projected column chunks are fetched in one
    /// `get_ranges` call (coalesced by the store) on the decoding thread, then decoded
    /// from memory like a local file, so the next row group downloads while this one
    /// is consumed.
    Remote {
        store: Arc<dyn object_store::ObjectStore>,
        key: object_store::path::Path,
    },
}

/// The fetched column chunks of one row group, addressed by file offset: a
/// `ChunkReader` over the parts of an object the readers will touch.
#[derive(Clone)]
struct Sparse {
    /// `(file offset, bytes)`, sorted by offset.
    parts: Vec<(u64, bytes::Bytes)>,
    len: u64,
}

impl Sparse {
    /// The fetched part holding file offset `start`, and that part's offset.
    fn locate(&self, start: u64) -> parquet::errors::Result<(u64, &bytes::Bytes)> {
        let i = self.parts.partition_point(|(o, _)| *o <= start);
        i.checked_sub(1)
            .map(|i| (self.parts[i].0, &self.parts[i].1))
            .filter(|(o, b)| start <= o + b.len() as u64)
            .ok_or_else(|| {
                parquet::errors::ParquetError::General(format!(
                    "offset {start} was not fetched (a column chunk outside its metadata's range?)"
                ))
            })
    }

    /// `len` bytes from `start`, which must lie in one fetched part.
    fn part(&self, start: u64, len: u64) -> parquet::errors::Result<bytes::Bytes> {
        let (o, b) = self.locate(start)?;
        let (from, to) = ((start - o) as usize, (start - o + len) as usize);
        if to > b.len() {
            return Err(parquet::errors::ParquetError::General(format!(
                "bytes {start}..{} were not fetched",
                start + len
            )));
        }
        Ok(b.slice(from..to))
    }
}

impl parquet::file::reader::Length for Sparse {
    fn len(&self) -> u64 {
        self.len
    }
}

impl parquet::file::reader::ChunkReader for Sparse {
    type T = bytes::buf::Reader<bytes::Bytes>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        use bytes::Buf;
        let (o, b) = self.locate(start)?;
        Ok(b.slice((start - o) as usize..).reader())
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<bytes::Bytes> {
        self.part(start, length as u64)
    }
}

/// Record batches of the given row groups, the list columns decoded by the fast path.
/// Readers of several files can be chained ([`FastReader::then`]) so that row groups
/// keep decoding across file boundaries.
pub struct FastReader {
    srcs: Vec<Src>,
    batch_rows: usize,
    /// Row groups not yet returned, in output order.
    pending: VecDeque<Unit>,
    /// Row groups not yet started, in start order (see [`start_order`]).
    start: VecDeque<Unit>,
    running: Vec<(Unit, std::thread::JoinHandle<Decoded>)>,
    /// Row groups whose decoder has finished, announced on `done_rx`.
    finished: Vec<Unit>,
    done_tx: std::sync::mpsc::Sender<Unit>,
    done_rx: std::sync::mpsc::Receiver<Unit>,
    ready: VecDeque<(usize, RecordBatch)>,
    pool: Arc<Pool>,
}

/// One file of a [`FastReader`].
struct Src {
    source: FastSource,
    meta: ArrowReaderMetadata,
    plan: Arc<Plan>,
}

/// A row group of one of a reader's files: `(file, row group)`.
type Unit = (usize, usize);

/// Row groups decoding at once: one per core of the 2-core machines this is tuned
/// on, the consumer's work (scoring, encoding) riding on the same threads.
pub const IN_FLIGHT: usize = 2;

/// The order to start row groups in: output order, except that a short last row
/// group starts second. Started last, it finishes early and leaves one core idle
/// while the full row group beside it runs to its end (measured as 40 ms of a
/// 0.8 s run); started second, the last two to finish are full ones. Its decoded
/// batches wait for their turn, which holds one short row group at most.
fn start_order(srcs: &[Src], order: &VecDeque<Unit>) -> VecDeque<Unit> {
    let rows = |(f, rg): Unit| srcs[f].meta.metadata().row_group(rg).num_rows();
    let mut start = order.clone();
    if start.len() >= 3 {
        let last = start[start.len() - 1];
        let longest = start.iter().map(|&u| rows(u)).max().unwrap_or(0);
        if rows(last) < longest {
            start.pop_back();
            start.insert(1, last);
        }
    }
    start
}

impl FastReader {
    pub fn new(
        source: FastSource,
        meta: ArrowReaderMetadata,
        plan: Plan,
        row_groups: Option<Vec<usize>>,
        batch_rows: usize,
    ) -> Self {
        let n = meta.metadata().num_row_groups();
        let pending: VecDeque<Unit> = row_groups
            .unwrap_or_else(|| (0..n).collect())
            .into_iter()
            .map(|rg| (0, rg))
            .collect();
        let srcs = vec![Src {
            source,
            meta,
            plan: Arc::new(plan),
        }];
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        FastReader {
            start: start_order(&srcs, &pending),
            srcs,
            pending,
            batch_rows,
            running: Vec::new(),
            finished: Vec::new(),
            done_tx,
            done_rx,
            ready: VecDeque::new(),
            pool: Arc::default(),
        }
    }

    /// This reader's row groups, then `next`'s (a reader not yet read from). With one
    /// reader per file, a file of one row group would decode on one core, and every
    /// file's last row group would run alone (a lake of sixteen 65k-row files scored
    /// 1.7 times slower than the same rows in one file).
    /// Both readers must be unread.
    pub fn then(mut self, next: FastReader) -> Self {
        debug_assert!(self.running.is_empty() && self.ready.is_empty());
        debug_assert!(next.running.is_empty() && next.ready.is_empty());
        let base = self.srcs.len();
        self.srcs.extend(next.srcs);
        self.pending
            .extend(next.pending.into_iter().map(|(f, rg)| (base + f, rg)));
        self.start = start_order(&self.srcs, &self.pending);
        self
    }

    pub fn schema(&self) -> SchemaRef {
        self.srcs[0].plan.projected.clone()
    }

    fn spawn(&mut self, unit: Unit) {
        let src = &self.srcs[unit.0];
        let source = src.source.clone();
        let meta = src.meta.clone();
        let plan = src.plan.clone();
        let batch_rows = self.batch_rows;
        let pool = self.pool.clone();
        let done = self.done_tx.clone();
        let handle = std::thread::spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                row_group(&source, &meta, &plan, unit.1, batch_rows, &pool)
            }))
            .unwrap_or_else(|_| {
                Err(parquet::errors::ParquetError::General(
                    "a data page could not be decoded".into(),
                ))
            });
            // The reader may be gone (it stopped on an error); nothing waits then.
            let _ = done.send(unit);
            r
        });
        self.running.push((unit, handle));
    }

    /// The next batch and the index of its file among the chained readers.
    pub fn next_from(&mut self) -> Option<(usize, parquet::errors::Result<RecordBatch>)> {
        loop {
            if let Some((f, b)) = self.ready.pop_front() {
                return Some((f, Ok(b)));
            }
            let want = *self.pending.front()?;
            // Wait for the next row group in order, starting another whenever a
            // decoder finishes, so IN_FLIGHT keep running even while a short row
            // group that finished early waits for its turn. `want` is started by this
            // loop at the latest: the start order only moves the last row group
            // earlier, so every unit before `want` in it has been started.
            loop {
                while let Ok(u) = self.done_rx.try_recv() {
                    self.finished.push(u);
                }
                let busy = self.running.len() - self.finished.len();
                if busy < IN_FLIGHT
                    && let Some(u) = self.start.pop_front()
                {
                    self.spawn(u);
                    continue;
                }
                if self.finished.contains(&want) {
                    break;
                }
                match self.done_rx.recv() {
                    Ok(u) => self.finished.push(u),
                    Err(_) => break,
                }
            }
            self.finished.retain(|&u| u != want);
            let at = self
                .running
                .iter()
                .position(|(u, _)| *u == want)
                .expect("started by the loop");
            let (_, handle) = self.running.remove(at);
            self.pending.pop_front();
            let failed = match handle.join() {
                Ok(Ok(batches)) => {
                    self.ready.extend(batches.into_iter().map(|b| (want.0, b)));
                    continue;
                }
                Ok(Err(e)) => e,
                Err(_) => {
                    parquet::errors::ParquetError::General("the decoding thread failed".into())
                }
            };
            // The other decoders finish on their own; their results are dropped.
            self.pending.clear();
            self.start.clear();
            self.running.clear();
            self.finished.clear();
            return Some((want.0, Err(failed)));
        }
    }
}

impl Iterator for FastReader {
    type Item = parquet::errors::Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_from().map(|(_, b)| b)
    }
}

/// One row group as batches: the fast path for the list columns where it applies,
/// the general reader for everything else.
fn row_group(
    source: &FastSource,
    meta: &ArrowReaderMetadata,
    plan: &Plan,
    rg: usize,
    batch_rows: usize,
    pool: &Arc<Pool>,
) -> Decoded {
    match source {
        FastSource::Local(path) => {
            let open = || File::open(path);
            row_group_from(&Arc::new(open()?), open, meta, plan, rg, batch_rows, pool)
        }
        FastSource::Remote { store, key } => {
            let sparse = fetch(store, key, meta, plan, rg)?;
            let open = || Ok(sparse.clone());
            row_group_from(
                &Arc::new(sparse.clone()),
                open,
                meta,
                plan,
                rg,
                batch_rows,
                pool,
            )
        }
    }
}

/// Downloads the column chunks of `plan`'s roots in row group `rg`.
fn fetch(
    store: &Arc<dyn object_store::ObjectStore>,
    key: &object_store::path::Path,
    meta: &ArrowReaderMetadata,
    plan: &Plan,
    rg: usize,
) -> parquet::errors::Result<Sparse> {
    let md = meta.metadata().row_group(rg);
    let pschema = meta.metadata().file_metadata().schema_descr();
    let mut ranges: Vec<std::ops::Range<u64>> = (0..md.num_columns())
        .filter(|&c| plan.roots.contains(&pschema.get_column_root_idx(c)))
        .map(|c| {
            let (start, len) = md.column(c).byte_range();
            start..start + len
        })
        .collect();
    ranges.sort_by_key(|r| r.start);
    let len = ranges.iter().map(|r| r.end).max().unwrap_or(0);
    let bytes = crate::store::block_on(store.get_ranges(key, &ranges))
        .map_err(|e| parquet::errors::ParquetError::External(Box::new(e)))?;
    Ok(Sparse {
        parts: ranges.iter().map(|r| r.start).zip(bytes).collect(),
        len,
    })
}

/// [`row_group`] over any reader: `shared` for the list pages, `open` for a fresh
/// reader for the general reader.
#[allow(clippy::too_many_arguments)]
fn row_group_from<R: ChunkReader + 'static>(
    shared: &Arc<R>,
    open: impl Fn() -> std::io::Result<R>,
    meta: &ArrowReaderMetadata,
    plan: &Plan,
    rg: usize,
    batch_rows: usize,
    pool: &Arc<Pool>,
) -> Decoded {
    let md = meta.metadata().row_group(rg);
    let rows = md.num_rows().max(0) as usize;
    let others = || -> Decoded {
        if plan.others.is_empty() {
            Ok(vec![])
        } else {
            general(open()?, meta, &plan.others, rg, batch_rows)
        }
    };
    let fused = plan.fused.as_ref();
    let mut lists: Vec<Option<Chunked>> = (0..plan.lists.len()).map(|_| None).collect();
    for (li, l) in plan.lists.iter().enumerate() {
        if fused.is_some_and(|f| f.list == li) {
            continue;
        }
        match decode_list(shared, md.column(l.leaf), rows, l, batch_rows * l.dim, pool)? {
            Some(values) => lists[li] = Some(values),
            None => return general(open()?, meta, &plan.roots, rg, batch_rows),
        }
    }
    let others = others()?;
    if let Some(f) = fused {
        let given = assemble(plan, rows, batch_rows, &others, &lists, &f.given)?;
        if let Some(g) = f.consumer.start(&given) {
            let l = &plan.lists[f.list];
            // One page of values at a time (about 1 MiB), scored where the page was
            // decompressed, while it is in L2. A row split across pages waits here.
            let mut sink = Consume {
                group: g,
                scratch: Vec::new(),
                dim: l.dim,
            };
            let whole = stream_list(shared, md.column(l.leaf), rows, l, &mut sink)?;
            if whole && sink.scratch.is_empty() {
                return sink.group.finish(given);
            }
            // Not a dense PLAIN list after all: what was consumed is dropped and the
            // row group is read by the general reader.
            return general(open()?, meta, &plan.roots, rg, batch_rows);
        }
        // Declined: the list is read like the others.
        let l = &plan.lists[f.list];
        match decode_list(shared, md.column(l.leaf), rows, l, batch_rows * l.dim, pool)? {
            Some(values) => lists[f.list] = Some(values),
            None => return general(open()?, meta, &plan.roots, rg, batch_rows),
        }
    }
    assemble(plan, rows, batch_rows, &others, &lists, &plan.projected)
}

/// A row group's batches with `schema`'s columns (the plan's, or all but the fused
/// list): the decoded lists, where `lists` holds them, between the general reader's
/// columns `others`, batch by batch as the general reader cut them.
fn assemble(
    plan: &Plan,
    rows: usize,
    batch_rows: usize,
    others: &[RecordBatch],
    lists: &[Option<Chunked>],
    schema: &SchemaRef,
) -> Decoded {
    if schema.fields().is_empty() {
        return Ok(vec![]);
    }
    let mut out = Vec::with_capacity(rows.div_ceil(batch_rows));
    let mut start = 0;
    let mut k = 0;
    while start < rows {
        let n = match others.get(k) {
            Some(b) => b.num_rows(),
            None => batch_rows.min(rows - start),
        };
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
        let mut oi = 0;
        for &root in &plan.roots {
            match plan.lists.iter().position(|l| l.root == root) {
                Some(li) => {
                    let Some(values) = &lists[li] else { continue };
                    let l = &plan.lists[li];
                    cols.push(Arc::new(FixedSizeListArray::new(
                        l.item.clone(),
                        l.dim as i32,
                        Arc::new(Float32Array::new(
                            values.range(start * l.dim, n * l.dim),
                            None,
                        )),
                        None,
                    )));
                }
                None => {
                    cols.push(others[k].column(oi).clone());
                    oi += 1;
                }
            }
        }
        out.push(RecordBatch::try_new(schema.clone(), cols)?);
        start += n;
        k += 1;
    }
    Ok(out)
}

/// The general Arrow reader over one row group and some root columns.
fn general<R: ChunkReader + 'static>(
    file: R,
    meta: &ArrowReaderMetadata,
    roots: &[usize],
    rg: usize,
    batch_rows: usize,
) -> Decoded {
    let b = ParquetRecordBatchReaderBuilder::new_with_metadata(file, meta.clone());
    let mask = ProjectionMask::roots(b.parquet_schema(), roots.iter().copied());
    b.with_projection(mask)
        .with_row_groups(vec![rg])
        .with_batch_size(batch_rows)
        .build()?
        .map(|r| r.map_err(|e| parquet::errors::ParquetError::External(Box::new(e))))
        .collect()
}

/// The values of a list column chunk, or `None` when the chunk is not a dense PLAIN
/// `FixedSizeList` this path can copy exactly.
///
/// The values come in buffers of `per` values (a batch's worth), so a batch that
/// outlives its row group, queued in a DataFusion plan say, keeps 32 MiB alive rather
/// than the row group's 128 MiB.
fn decode_list<R: ChunkReader + 'static>(
    file: &Arc<R>,
    chunk: &ColumnChunkMetaData,
    rows: usize,
    l: &ListColumn,
    per: usize,
    pool: &Arc<Pool>,
) -> parquet::errors::Result<Option<Chunked>> {
    if rows * l.dim * 4 > MAX_FAST_BYTES {
        return Ok(None);
    }
    let total = rows * l.dim;
    let per = per.max(1);
    let mut sink = Collect {
        pool,
        per,
        cur: pool.take(per),
        done: Vec::with_capacity(total.div_ceil(per)),
    };
    let whole = stream_list(file, chunk, rows, l, &mut sink)?;
    if !whole {
        return Ok(None);
    }
    if !sink.cur.is_empty() {
        sink.done.push(leased(sink.cur, pool));
    }
    Ok(Some(Chunked {
        per,
        parts: sink.done,
    }))
}

/// A column chunk's values in buffers of `per` values each (the last may be short).
struct Chunked {
    per: usize,
    parts: Vec<ScalarBuffer<f32>>,
}

impl Chunked {
    /// Values `from..from + len`: a view where they lie in one buffer (always, for
    /// batches cut at multiples of `per`), else a copy.
    fn range(&self, from: usize, len: usize) -> ScalarBuffer<f32> {
        let (c, off) = (from / self.per, from % self.per);
        if let Some(part) = self.parts.get(c)
            && off + len <= part.len()
        {
            return part.slice(off, len);
        }
        let mut v = Vec::with_capacity(len);
        let (mut at, end) = (from, from + len);
        while at < end {
            let (c, off) = (at / self.per, at % self.per);
            let Some(part) = self.parts.get(c) else { break };
            let take = (part.len() - off).min(end - at);
            v.extend_from_slice(&part[off..off + take]);
            at += take;
        }
        ScalarBuffer::from(v)
    }
}

/// Where [`stream_list`] delivers a chunk's values, page by page, in order.
trait Pages {
    /// A page's values: little-endian f32 bytes, a whole number of values. `false`
    /// declines the chunk.
    fn values(&mut self, b: &[u8]) -> bool;
    /// `Some(carried)` when whole rows may come through [`Pages::rows_at`]:
    /// `carried` values of a row cut by the last page wait to be completed by the next
    /// [`Pages::values`] first.
    fn in_place(&self) -> Option<usize> {
        None
    }
    /// Whole rows, row `k` at byte `at[k]` of `buf`.
    fn rows_at(&mut self, _buf: &[u8], _at: &[usize]) -> bool {
        false
    }
}

/// Appends the values to buffers of `per` values from the pool.
struct Collect<'p> {
    pool: &'p Arc<Pool>,
    per: usize,
    cur: Vec<f32>,
    done: Vec<ScalarBuffer<f32>>,
}

impl Pages for Collect<'_> {
    fn values(&mut self, mut b: &[u8]) -> bool {
        while !b.is_empty() {
            if self.cur.len() == self.per {
                // Every buffer of a column has room for a whole batch, the last
                // one of a row group too, so any of them serves any batch later.
                let next = self.pool.take(self.per);
                let full = std::mem::replace(&mut self.cur, next);
                self.done.push(leased(full, self.pool));
            }
            let take = (4 * (self.per - self.cur.len())).min(b.len());
            extend_le(&mut self.cur, &b[..take]);
            b = &b[take..];
        }
        true
    }
}

/// Hands whole rows to a fused consumer; a row split across pages waits in `scratch`.
struct Consume {
    group: Box<dyn FusedGroup>,
    scratch: Vec<f32>,
    dim: usize,
}

impl Pages for Consume {
    fn values(&mut self, b: &[u8]) -> bool {
        feed(&mut self.scratch, b, self.dim, |v| self.group.rows(v));
        true
    }
    fn in_place(&self) -> Option<usize> {
        Some(self.scratch.len())
    }
    fn rows_at(&mut self, buf: &[u8], at: &[usize]) -> bool {
        self.group.rows_at(buf, at);
        true
    }
}

/// Hands each data page's values (little-endian f32 bytes) to `sink` in order, after
/// checking the page's levels. `Ok(false)` when the chunk is not a dense PLAIN (or
/// dictionary-indexed) `FixedSizeList` this path can read exactly (or `sink` declined); the values handed
/// over so far must then be discarded.
fn stream_list<R: ChunkReader + 'static>(
    file: &Arc<R>,
    chunk: &ColumnChunkMetaData,
    rows: usize,
    l: &ListColumn,
    sink: &mut impl Pages,
) -> parquet::errors::Result<bool> {
    let total = rows * l.dim;
    let mut seen = 0usize;
    let def_width = bit_width(l.max_def);
    let rules = Rules {
        dim: l.dim,
        max_def: l.max_def as u32,
    };
    // Snappy pages are decompressed here, into one buffer reused page after page:
    // the page reader would allocate and zero a fresh buffer for every page (a sixth
    // of decoding's time) and write it cold.
    let own_snappy = chunk.compression() == Compression::SNAPPY;
    let raw_chunk;
    let chunk = if own_snappy {
        raw_chunk = chunk
            .clone()
            .into_builder()
            .set_compression(Compression::UNCOMPRESSED)
            .build()?;
        &raw_chunk
    } else {
        chunk
    };
    let mut body: Vec<u8> = Vec::new();
    let mut holey = InPlace::default();
    let mut dict = Dictionary::default();
    let pages = SerializedPageReader::new(file.clone(), chunk, rows, None)?;
    for page in pages {
        let start = seen;
        let (ok, n) = match page? {
            Page::DictionaryPage {
                buf,
                num_values,
                encoding,
                ..
            } => {
                let buf: &[u8] = if own_snappy {
                    unsnap(&buf, &mut body)?
                } else {
                    &buf
                };
                (dict.set(buf, num_values as usize, encoding), 0)
            }
            Page::DataPage {
                buf,
                num_values,
                encoding,
                def_level_encoding,
                rep_level_encoding,
                ..
            } => {
                let n = num_values as usize;
                let indexed = Dictionary::indexes(encoding);
                if (encoding != Encoding::PLAIN && !indexed)
                    || rep_level_encoding != Encoding::RLE
                    || (l.max_def > 0 && def_level_encoding != Encoding::RLE)
                {
                    return Ok(false);
                }
                let page = V1 {
                    n,
                    start,
                    def_width,
                    rules: &rules,
                };
                // Rows the consumer can take where they lie are read in the snappy
                // block itself (see `InPlace`); indexed pages hold no floats to place.
                let buf = match (own_snappy && !indexed, sink.in_place()) {
                    (true, Some(carried)) => match holey.page(buf, &page, carried, sink)? {
                        Ok(ok) => {
                            if !ok {
                                return Ok(false);
                            }
                            seen += n;
                            continue;
                        }
                        Err(shared) => shared,
                    },
                    _ => buf,
                };
                let buf: &[u8] = if own_snappy {
                    unsnap(&buf, &mut body)?
                } else {
                    &buf
                };
                (
                    page.values(buf, |vals| dict.pass(indexed, vals, n, sink)),
                    n,
                )
            }
            Page::DataPageV2 {
                buf,
                num_values,
                encoding,
                num_nulls,
                def_levels_byte_len,
                rep_levels_byte_len,
                is_compressed,
                ..
            } => {
                let n = num_values as usize;
                let (r, d) = (rep_levels_byte_len as usize, def_levels_byte_len as usize);
                let indexed = Dictionary::indexes(encoding);
                if (encoding != Encoding::PLAIN && !indexed) || num_nulls != 0 || buf.len() < r + d
                {
                    return Ok(false);
                }
                let (rep, def, vals) = (&buf[..r], &buf[r..r + d], &buf[r + d..]);
                let vals = if own_snappy && is_compressed {
                    unsnap(vals, &mut body)?
                } else {
                    vals
                };
                let ok = check(rep, def, n, start, def_width, &rules)
                    && dict.pass(indexed, vals, n, sink);
                (ok, n)
            }
        };
        if !ok {
            return Ok(false);
        }
        seen += n;
    }
    Ok(seen == total)
}

/// A column chunk's dictionary, for the pages written before the writer fell back to
/// PLAIN. Writers (arrow-rs, pyarrow, parquet-mr) try a dictionary first by default,
/// so a float column's first page or two hold indices into a dictionary page of
/// distinct floats, and the rest are PLAIN. Declining such chunks sent files written
/// with default settings through the general reader, about five times slower.
#[derive(Default)]
struct Dictionary {
    /// Little-endian f32 entries.
    entries: Vec<u8>,
    /// The page's values as f32 bytes, handed to the sink.
    out: Vec<u8>,
}

impl Dictionary {
    fn indexes(encoding: Encoding) -> bool {
        matches!(
            encoding,
            Encoding::RLE_DICTIONARY | Encoding::PLAIN_DICTIONARY
        )
    }

    /// Takes a dictionary page; `false` when it is not `n` PLAIN floats.
    fn set(&mut self, buf: &[u8], n: usize, encoding: Encoding) -> bool {
        if !matches!(encoding, Encoding::PLAIN | Encoding::PLAIN_DICTIONARY) {
            return false;
        }
        let Some(bytes) = n.checked_mul(4).and_then(|len| buf.get(..len)) else {
            return false;
        };
        self.entries.clear();
        self.entries.extend_from_slice(bytes);
        true
    }

    /// A data page's value section to `sink`: indices looked up here, or PLAIN floats
    /// as they are.
    fn pass(&mut self, indexed: bool, vals: &[u8], n: usize, sink: &mut impl Pages) -> bool {
        if indexed {
            self.values(vals, n, sink)
        } else {
            pass(vals, n, sink)
        }
    }

    /// Looks up `n` indices (a bit-width byte, then an RLE / bit-packed hybrid run)
    /// and hands the floats to `sink`. `false` for an index outside the dictionary or
    /// a short stream: the general reader then reads the chunk and reports it.
    fn values(&mut self, vals: &[u8], n: usize, sink: &mut impl Pages) -> bool {
        let Some((&width, runs)) = vals.split_first() else {
            return n == 0;
        };
        let entries = self.entries.len() / 4;
        let Dictionary { entries: e, out } = self;
        out.clear();
        out.reserve(n * 4);
        let ok = hybrid(runs, n, u32::from(width), |v, count| {
            let v = v as usize;
            if v >= entries {
                return false;
            }
            let f = &e[v * 4..v * 4 + 4];
            for _ in 0..count {
                out.extend_from_slice(f);
            }
            true
        });
        ok && out.len() == n * 4 && sink.values(out)
    }
}

/// Walks the first `n` values of an RLE / bit-packed hybrid stream of `width`-bit
/// values (up to 32), calling `each(value, count)` for each RLE run and for each
/// bit-packed value (count 1); stops with `false` when `each` does or the stream is
/// short.
fn hybrid(mut buf: &[u8], n: usize, width: u32, mut each: impl FnMut(u32, usize) -> bool) -> bool {
    if width > 32 {
        return false;
    }
    if width == 0 {
        // Every index is 0 (a one-entry dictionary); the stream still carries runs.
        return n == 0 || each(0, n);
    }
    let value_bytes = width.div_ceil(8) as usize;
    let mask = if width == 32 {
        u64::from(u32::MAX)
    } else {
        (1u64 << width) - 1
    };
    let mut i = 0usize;
    while i < n {
        let Some((header, used)) = varint(buf) else {
            return false;
        };
        buf = &buf[used..];
        if header & 1 == 0 {
            let count = ((header >> 1) as usize).min(n - i);
            let Some(raw) = buf.get(..value_bytes) else {
                return false;
            };
            let v = raw
                .iter()
                .enumerate()
                .fold(0u32, |v, (k, b)| v | u32::from(*b) << (8 * k));
            buf = &buf[value_bytes..];
            if count == 0 || !each(v, count) {
                return false;
            }
            i += count;
        } else {
            let groups = (header >> 1) as usize;
            let Some(bytes) = groups.checked_mul(width as usize) else {
                return false;
            };
            let Some(packed) = buf.get(..bytes) else {
                return false;
            };
            buf = &buf[bytes..];
            let count = (groups * 8).min(n - i);
            for k in 0..count {
                let bit = k * width as usize;
                // Up to 39 bits from the value's first byte: eight bytes, zero-padded
                // past the end of the group.
                let at = bit / 8;
                let mut word = [0u8; 8];
                let have = (packed.len() - at).min(8);
                word[..have].copy_from_slice(&packed[at..at + have]);
                let v = (u64::from_le_bytes(word) >> (bit % 8)) & mask;
                if !each(v as u32, 1) {
                    return false;
                }
            }
            i += count;
        }
    }
    true
}

/// A v1 data page's place in its chunk and the rules its levels must follow.
struct V1<'r> {
    n: usize,
    start: usize,
    def_width: u32,
    rules: &'r Rules,
}

impl V1<'_> {
    /// The repetition levels, the definition levels (empty for a required list) and
    /// the rest of the decompressed page; `None` when the sections do not parse.
    fn sections<'b>(&self, buf: &'b [u8]) -> Option<(&'b [u8], &'b [u8], &'b [u8])> {
        let (rep, rest) = prefixed(buf)?;
        if self.rules.max_def == 0 {
            return Some((rep, &[], rest));
        }
        let (def, vals) = prefixed(rest)?;
        Some((rep, def, vals))
    }

    fn levels_ok(&self, rep: &[u8], def: &[u8]) -> bool {
        check(rep, def, self.n, self.start, self.def_width, self.rules)
    }

    /// Checks the decompressed page's levels and hands its value section to `hand`,
    /// as [`stream_list`] does with a page it reads the usual way.
    fn values(&self, buf: &[u8], hand: impl FnOnce(&[u8]) -> bool) -> bool {
        self.sections(buf)
            .is_some_and(|(rep, def, vals)| self.levels_ok(rep, def) && hand(vals))
    }
}

/// Reads a v1 snappy page's rows inside the compressed page buffer. The values are
/// stored as long literals (incompressible floats); [`crate::snappy::Decoder`] leaves
/// those in place, so a row inside one is read there, and a row cut by the edge
/// between two literals is made whole by moving its head over the next literal's tag
/// (a few bytes): the page buffer is ours (the file reader reads each page into a
/// fresh one), so nothing else sees the move. Rows that do not fit (in a short
/// literal or in copies, across more than two literals, or cut by the page's edge) are
/// written out and handed over as values; a page with no row in place, or in a shared
/// buffer (an object's fetched bytes), is read the usual way.
#[derive(Default)]
struct InPlace {
    dec: crate::snappy::Decoder,
    /// Where each row starts in the page buffer.
    at: Vec<usize>,
    /// `(from, len, by)`: move bytes `[from, from + len)` forward by `by`.
    moves: Vec<(usize, usize, usize)>,
}

impl InPlace {
    /// `Ok(Ok(ok))` when the page was handled (`ok` as for [`stream_list`]): in
    /// place, or written out whole and read the usual way when no row can be placed.
    /// `Ok(Err(buf))` returns a shared buffer, which must not be moved in.
    /// `carried` values of a row cut by the previous page are completed from this
    /// page's first values, and a row this page cuts is left to the next, both through
    /// [`Pages::values`]; the whole rows between go to [`Pages::rows_at`].
    fn page(
        &mut self,
        buf: bytes::Bytes,
        v1: &V1<'_>,
        carried: usize,
        sink: &mut impl Pages,
    ) -> parquet::errors::Result<Result<bool, bytes::Bytes>> {
        let mut page = match buf.try_into_mut() {
            Ok(m) => m,
            Err(shared) => return Ok(Err(shared)),
        };
        self.dec
            .decode(&page)
            .map_err(|e| parquet::errors::ParquetError::General(format!("a snappy page: {e}")))?;
        let (n, dim, rb) = (v1.n, v1.rules.dim, v1.rules.dim * 4);
        let head = if carried == 0 {
            0
        } else {
            (dim - carried).min(n)
        };
        let rows = (n - head) / dim;
        let placed = self
            .levels(&page, v1)
            .filter(|&v0| v0 + n * 4 <= self.dec.len() && self.plan(v0 + head * 4, rows, rb) > 0);
        let Some(v0) = placed else {
            // Nothing to read in place: the page written out whole, read as usual.
            let all = self.dec.fill(&page, 0, self.dec.len()).expect("decoded");
            return Ok(Ok(v1.values(all, |vals| pass(vals, v1.n, sink))));
        };
        let (mid, tail) = (v0 + head * 4, v0 + (head + rows * dim) * 4);
        let InPlace { dec, at, moves } = self;
        let first = dec.fill(&page, v0, mid).expect("within the page");
        if !first.is_empty() && !sink.values(first) {
            return Ok(Ok(false));
        }
        // A move touches only its cut row and the tag after it, never another row.
        for &(from, len, by) in moves.iter() {
            page.copy_within(from..from + len, from + by);
        }
        // Runs of placed rows go in place; rows between (in a short last literal, or
        // partly in copies) are written out.
        let mut k = 0;
        while k < rows {
            let placed = at[k] != COPY;
            let e = k + at[k..]
                .iter()
                .position(|&a| (a != COPY) != placed)
                .unwrap_or(rows - k);
            let ok = if placed {
                sink.rows_at(&page, &at[k..e])
            } else {
                let b = dec.fill(&page, mid + k * rb, mid + e * rb);
                sink.values(b.expect("within the page"))
            };
            if !ok {
                return Ok(Ok(false));
            }
            k = e;
        }
        let last = dec.fill(&page, tail, v0 + n * 4).expect("within the page");
        Ok(Ok(last.is_empty() || sink.values(last)))
    }

    /// Checks the page's levels and returns where its values start; `None` when the
    /// levels are not a dense list's (the usual path then decides).
    fn levels(&mut self, page: &[u8], v1: &V1<'_>) -> Option<usize> {
        let len_at = |dec: &mut crate::snappy::Decoder, a: usize| -> Option<usize> {
            let b = dec.fill(page, a, a.checked_add(4)?)?;
            Some(u32::from_le_bytes(b.try_into().ok()?) as usize)
        };
        let mut end = 4usize.checked_add(len_at(&mut self.dec, 0)?)?;
        if v1.rules.max_def > 0 {
            end = end
                .checked_add(4)?
                .checked_add(len_at(&mut self.dec, end)?)?;
        }
        let (rep, def, _) = v1.sections(self.dec.fill(page, 0, end)?)?;
        v1.levels_ok(rep, def).then_some(end)
    }

    /// Locates `rows` rows of `rb` bytes from output byte `v0` in the page buffer
    /// ([`COPY`] for a row not wholly inside holes), and returns how many are there.
    fn plan(&mut self, v0: usize, rows: usize, rb: usize) -> usize {
        self.at.clear();
        self.moves.clear();
        let holes = self.dec.holes();
        let mut k = 0;
        let mut p = v0;
        let mut placed = 0;
        for _ in 0..rows {
            while holes.get(k).is_some_and(|h| h.end() <= p) {
                k += 1;
            }
            let at = match holes.get(k).filter(|h| h.at <= p) {
                Some(h) if p + rb <= h.end() => h.src + (p - h.at),
                Some(h) => match holes.get(k + 1) {
                    Some(next) if next.at == h.end() && p + rb <= next.end() => {
                        let s = h.src + (p - h.at);
                        let by = next.src - (h.src + h.len);
                        self.moves.push((s, h.end() - p, by));
                        s + by
                    }
                    _ => COPY,
                },
                None => COPY,
            };
            placed += usize::from(at != COPY);
            self.at.push(at);
            p += rb;
        }
        placed
    }
}

/// A row [`InPlace::plan`] could not place.
const COPY: usize = usize::MAX;

/// Decompresses one snappy block into `out` (grown, never shrunk or re-zeroed).
fn unsnap<'a>(compressed: &[u8], out: &'a mut Vec<u8>) -> parquet::errors::Result<&'a [u8]> {
    let bad =
        |e: snap::Error| parquet::errors::ParquetError::General(format!("a snappy page: {e}"));
    let n = snap::raw::decompress_len(compressed).map_err(bad)?;
    if out.len() < n {
        out.resize(n, 0);
    }
    let k = snap::raw::Decoder::new()
        .decompress(compressed, &mut out[..n])
        .map_err(bad)?;
    Ok(&out[..k])
}

/// The repetition and definition levels of `n` values starting at value `start` of
/// the chunk follow the dense-list rules.
fn check(rep: &[u8], def: &[u8], n: usize, start: usize, def_width: u32, r: &Rules) -> bool {
    levels_ok(rep, n, 1, |i, c, v| r.rep_run(start + i, c, v))
        && (r.max_def == 0 || levels_ok(def, n, def_width, |_, _, v| v == r.max_def))
}

/// A v1 level section: a 4-byte little-endian length, then that many bytes.
fn prefixed(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u32::from_le_bytes(buf.get(..4)?.try_into().ok()?) as usize;
    let end = 4usize.checked_add(len)?;
    Some((buf.get(4..end)?, &buf[end..]))
}

/// Hands one page's values (little-endian f32 bytes, a whole number of values) to
/// `rows` as whole rows of `dim`, in order: in place when [`as_f32`] allows, else
/// through `scratch`, which also carries a row split across pages to the next call.
fn feed(scratch: &mut Vec<f32>, mut b: &[u8], dim: usize, mut rows: impl FnMut(&[f32])) {
    if !scratch.is_empty() {
        let take = ((dim - scratch.len()) * 4).min(b.len());
        extend_le(scratch, &b[..take]);
        b = &b[take..];
        if scratch.len() < dim {
            return;
        }
        rows(scratch);
        scratch.clear();
    }
    match as_f32(b) {
        Some(v) => {
            let ready = v.len() / dim * dim;
            if ready > 0 {
                rows(&v[..ready]);
            }
            scratch.extend_from_slice(&v[ready..]);
        }
        None => {
            extend_le(scratch, b);
            let ready = scratch.len() / dim * dim;
            if ready > 0 {
                rows(&scratch[..ready]);
                scratch.drain(..ready);
            }
        }
    }
}

/// A PLAIN page's values in place, when the host is little-endian and they start on
/// a 4-byte boundary (as they do in the files we have seen); `None` means copy them.
fn as_f32(bytes: &[u8]) -> Option<&[f32]> {
    if cfg!(target_endian = "big") || !bytes.len().is_multiple_of(4) {
        return None;
    }
    // SAFETY: every bit pattern is a valid f32; `align_to` puts only whole, aligned
    // f32s in the middle part.
    let (head, mid, tail) = unsafe { bytes.align_to::<f32>() };
    (head.is_empty() && tail.is_empty()).then_some(mid)
}

/// Appends little-endian f32 bytes (a PLAIN page's values) to `out`: one `memcpy` on
/// a little-endian host. The value-by-value loop it replaces was a fifth of a drift
/// run's CPU, which decodes every row group into Arrow arrays.
fn extend_le(out: &mut Vec<f32>, bytes: &[u8]) {
    let n = bytes.len() / 4;
    if cfg!(target_endian = "little") {
        out.reserve(n);
        let len = out.len();
        // SAFETY: `reserve` made room for `n` more f32s after `len`; the source holds
        // `4·n` bytes and cannot overlap the Vec's own allocation (it is borrowed
        // while `out` is borrowed mutably); every bit pattern is a valid f32, and a
        // byte copy needs no alignment of the source.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                out.as_mut_ptr().add(len).cast::<u8>(),
                n * 4,
            );
            out.set_len(len + n);
        }
    } else {
        out.extend(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        );
    }
}

/// The first `n` values of a page's value section, to `sink`.
fn pass(vals: &[u8], n: usize, sink: &mut impl Pages) -> bool {
    vals.get(..n * 4).is_some_and(|v| sink.values(v))
}

fn bit_width(max: i16) -> u32 {
    16 - (max as u16).leading_zeros()
}

/// Checks the first `n` levels of an RLE / bit-packed hybrid stream with
/// `run(i, count, v)`: RLE runs whole (the common case: about two runs per row, so the
/// check costs nothing next to the copy), bit-packed values one by one.
fn levels_ok(buf: &[u8], n: usize, width: u32, run: impl Fn(usize, usize, u32) -> bool) -> bool {
    if width == 0 || width > 16 {
        return false;
    }
    let mut i = 0usize;
    hybrid(buf, n, width, |v, count| {
        let ok = run(i, count, v);
        i += count;
        ok
    })
}

/// The level rules of a dense list column, by value and by run: a repetition level is
/// 0 exactly at the first value of each row (multiples of `dim`), a definition level
/// is always the maximum.
struct Rules {
    dim: usize,
    max_def: u32,
}

impl Rules {
    /// The rule for one value: the check runs bit-packed levels through `rep_run`
    /// with a count of 1, which a test holds equal to this.
    #[cfg(test)]
    fn rep(&self, p: usize, v: u32) -> bool {
        v == u32::from(!p.is_multiple_of(self.dim))
    }

    /// A run of `count` copies of `v` from position `p`, decided without walking it.
    fn rep_run(&self, p: usize, count: usize, v: u32) -> bool {
        let off = p % self.dim;
        match v {
            0 => self.dim == 1 || (count == 1 && off == 0),
            1 => off != 0 && off + count <= self.dim,
            _ => false,
        }
    }
}

fn varint(buf: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (k, b) in buf.iter().enumerate().take(10) {
        v |= u64::from(b & 0x7f) << (7 * k);
        if b & 0x80 == 0 {
            return Some((v, k + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::Array;
    use parquet::arrow::ArrowWriter;
    use parquet::file::properties::{WriterProperties, WriterVersion};
    use proptest::prelude::*;

    /// Rows of `dim` floats; every `null_every`-th row null when set.
    fn batch(
        rows: usize,
        dim: usize,
        item_nullable: bool,
        null_every: Option<usize>,
    ) -> RecordBatch {
        let item = Arc::new(Field::new("item", DataType::Float32, item_nullable));
        let values = Float32Array::from_iter_values((0..rows * dim).map(|i| i as f32 * 0.5 - 3.0));
        let nulls = null_every.map(|k| (0..rows).map(|r| r % k != 1).collect::<Vec<_>>().into());
        let list = FixedSizeListArray::new(item.clone(), dim as i32, Arc::new(values), nulls);
        let id = arrow_array::Int64Array::from_iter_values(0..rows as i64);
        let schema = Arc::new(arrow_schema::Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("embedding", list.data_type().clone(), true),
        ]));
        RecordBatch::try_new(schema, vec![Arc::new(id), Arc::new(list)]).unwrap()
    }

    struct Case {
        rows: usize,
        dim: usize,
        rg: usize,
        page_rows: usize,
        v2: bool,
        dict: bool,
        snappy: bool,
        item_nullable: bool,
        null_every: Option<usize>,
    }

    fn write(case: &Case) -> (tempfile::NamedTempFile, RecordBatch) {
        let b = batch(case.rows, case.dim, case.item_nullable, case.null_every);
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(case.rg))
            .set_data_page_row_count_limit(case.page_rows)
            .set_write_batch_size(case.page_rows.max(1))
            .set_dictionary_enabled(case.dict)
            .set_writer_version(if case.v2 {
                WriterVersion::PARQUET_2_0
            } else {
                WriterVersion::PARQUET_1_0
            })
            .set_compression(if case.snappy {
                parquet::basic::Compression::SNAPPY
            } else {
                parquet::basic::Compression::UNCOMPRESSED
            })
            .build();
        let f = tempfile::NamedTempFile::new().unwrap();
        let mut w = ArrowWriter::try_new(f.reopen().unwrap(), b.schema(), Some(props)).unwrap();
        w.write(&b).unwrap();
        w.close().unwrap();
        (f, b)
    }

    fn meta(f: &tempfile::NamedTempFile) -> ArrowReaderMetadata {
        ArrowReaderMetadata::load(&f.reopen().unwrap(), Default::default()).unwrap()
    }

    /// What the fast reader returns, concatenated, and whether every row group took
    /// the fast path.
    fn fast(f: &tempfile::NamedTempFile, batch_rows: usize) -> (RecordBatch, bool) {
        let m = meta(f);
        let plan = plan(&m, None).expect("a FixedSizeList<Float32> column");
        let l = plan.lists[0].clone();
        let file = Arc::new(f.reopen().unwrap());
        let all_fast = (0..m.metadata().num_row_groups()).all(|rg| {
            let md = m.metadata().row_group(rg);
            let (rows, per) = (md.num_rows() as usize, batch_rows * l.dim);
            decode_list(&file, md.column(l.leaf), rows, &l, per, &Arc::default())
                .unwrap()
                .is_some()
        });
        let schema = plan.projected.clone();
        let batches: Vec<RecordBatch> = FastReader::new(
            FastSource::Local(f.path().to_path_buf()),
            m,
            plan,
            None,
            batch_rows,
        )
        .map(|b| b.unwrap())
        .collect();
        assert!(batches.iter().all(|b| b.num_rows() <= batch_rows));
        (
            arrow_select::concat::concat_batches(&schema, &batches).unwrap(),
            all_fast,
        )
    }

    #[test]
    fn dense_plain_lists_take_the_fast_path_and_equal_the_written_rows() {
        for (v2, snappy, item_nullable) in [
            (false, true, true),
            (true, false, false),
            (true, true, true),
        ] {
            let case = Case {
                rows: 2_000,
                dim: 24,
                rg: 700,
                page_rows: 100,
                v2,
                dict: false,
                snappy,
                item_nullable,
                null_every: None,
            };
            let (f, want) = write(&case);
            let (got, all_fast) = fast(&f, 256);
            assert!(all_fast, "v2={v2} snappy={snappy}");
            assert_eq!(got, want);
        }
    }

    /// A short last row group starts second; the batches still come in file order
    /// (checked by every test that compares the rows read with the rows written).
    #[test]
    fn a_short_last_row_group_starts_second() {
        let case = |rows, rg| Case {
            rows,
            dim: 4,
            rg,
            page_rows: 50,
            v2: false,
            dict: false,
            snappy: false,
            item_nullable: false,
            null_every: None,
        };
        for (rows, rg, want) in [
            (2_000, 500, vec![0, 1, 2, 3]),
            (1_900, 500, vec![0, 3, 1, 2]),
            (900, 500, vec![0, 1]),
        ] {
            let (f, written) = write(&case(rows, rg));
            let m = meta(&f);
            let n = m.metadata().num_row_groups();
            let r = FastReader::new(
                FastSource::Local(f.path().to_path_buf()),
                m,
                plan(&meta(&f), None).unwrap(),
                None,
                128,
            );
            let started: Vec<usize> = r.start.iter().map(|u| u.1).collect();
            assert_eq!(started, want, "{rows} rows");
            assert_eq!(r.pending.len(), n);
            let (got, _) = fast(&f, 128);
            assert_eq!(got, written);
        }
    }

    /// Chunks whose first pages index a dictionary (the writers' default, until the
    /// dictionary outgrows its page and they fall back to PLAIN) take the fast path
    /// and read back as written: all pages indexed, a fallback after a few pages, v1
    /// and v2 pages, snappy or not, and a one-entry dictionary (zero-bit indices).
    #[test]
    fn dictionary_pages_take_the_fast_path_with_the_same_rows() {
        let (rows, dim) = (1_000, 8);
        let distinct = batch(rows, dim, true, None);
        let constant = {
            let item = Arc::new(Field::new("item", DataType::Float32, true));
            let values = Float32Array::from_iter_values((0..rows * dim).map(|_| 1.25));
            let list = FixedSizeListArray::new(item, dim as i32, Arc::new(values), None);
            RecordBatch::try_new(
                distinct.schema(),
                vec![distinct.column(0).clone(), Arc::new(list)],
            )
            .unwrap()
        };
        for (name, b, dict_limit) in [
            ("all indexed", &distinct, 1 << 20),
            ("fallback to PLAIN", &distinct, 1 << 10),
            ("one entry", &constant, 1 << 20),
        ] {
            for (v2, snappy) in [(false, true), (false, false), (true, true)] {
                let props = WriterProperties::builder()
                    .set_max_row_group_row_count(Some(300))
                    .set_data_page_row_count_limit(64)
                    .set_write_batch_size(64)
                    .set_dictionary_enabled(true)
                    .set_dictionary_page_size_limit(dict_limit)
                    .set_writer_version(if v2 {
                        WriterVersion::PARQUET_2_0
                    } else {
                        WriterVersion::PARQUET_1_0
                    })
                    .set_compression(if snappy {
                        parquet::basic::Compression::SNAPPY
                    } else {
                        parquet::basic::Compression::UNCOMPRESSED
                    })
                    .build();
                let f = tempfile::NamedTempFile::new().unwrap();
                let mut w =
                    ArrowWriter::try_new(f.reopen().unwrap(), b.schema(), Some(props)).unwrap();
                w.write(b).unwrap();
                w.close().unwrap();
                let m = meta(&f);
                let chunk = m.metadata().row_group(0).column(1);
                assert!(
                    chunk.dictionary_page_offset().is_some(),
                    "{name}: a dictionary"
                );
                // Data pages written PLAIN exist only after a fallback.
                let encodings: Vec<Encoding> = {
                    use parquet::file::reader::FileReader;
                    let r = parquet::file::serialized_reader::SerializedFileReader::new(
                        f.reopen().unwrap(),
                    )
                    .unwrap();
                    let pages = r
                        .get_row_group(0)
                        .unwrap()
                        .get_column_page_reader(1)
                        .unwrap();
                    pages
                        .map(|p| p.unwrap())
                        .filter(|p| !matches!(p, Page::DictionaryPage { .. }))
                        .map(|p| p.encoding())
                        .collect()
                };
                assert!(Dictionary::indexes(encodings[0]), "{name}: {encodings:?}");
                let plain_data = encodings.contains(&Encoding::PLAIN);
                assert_eq!(
                    plain_data,
                    name == "fallback to PLAIN",
                    "{name}: {encodings:?}"
                );
                let (got, all_fast) = fast(&f, 128);
                assert!(all_fast, "{name} v2={v2} snappy={snappy}");
                assert_eq!(&got, b, "{name} v2={v2} snappy={snappy}");
            }
        }
    }

    #[test]
    fn nulls_fall_back_to_the_general_reader_with_the_same_rows() {
        for dict in [true, false] {
            let case = Case {
                rows: 1_000,
                dim: 8,
                rg: 300,
                page_rows: 64,
                v2: false,
                dict,
                snappy: true,
                item_nullable: true,
                null_every: Some(7),
            };
            let (f, want) = write(&case);
            let (got, all_fast) = fast(&f, 128);
            assert!(!all_fast, "dict={dict}: nulls must not take the fast path");
            assert_eq!(got, want);
            assert_eq!(got.column(1).null_count(), want.column(1).null_count());
        }
    }

    /// An object read through the store: only the projected chunks of each row group
    /// are fetched, the list pages take the fast path from memory, and the rows equal
    /// what was written, for every projection.
    #[test]
    fn objects_take_the_fast_path_from_fetched_ranges() {
        use object_store::ObjectStoreExt;
        let case = Case {
            rows: 1_500,
            dim: 12,
            rg: 400,
            page_rows: 64,
            v2: false,
            dict: false,
            snappy: true,
            item_nullable: true,
            null_every: None,
        };
        let (f, want) = write(&case);
        let store: Arc<dyn object_store::ObjectStore> =
            Arc::new(object_store::memory::InMemory::new());
        let key = object_store::path::Path::from("lake/part-0.parquet");
        let bytes = std::fs::read(f.path()).unwrap();
        crate::store::block_on(store.put(&key, bytes.into())).unwrap();
        let m = meta(&f);
        for columns in [None, Some(&[1usize][..]), Some(&[1usize, 0][..])] {
            let plan = plan(&m, columns).unwrap();
            let l = plan.lists[0].clone();
            for rg in 0..m.metadata().num_row_groups() {
                let sparse = fetch(&store, &key, &m, &plan, rg).unwrap();
                let md = m.metadata().row_group(rg);
                let fetched: usize = sparse.parts.iter().map(|(_, b)| b.len()).sum();
                let needed: u64 = plan
                    .roots
                    .iter()
                    .map(|&r| md.column(r).byte_range().1)
                    .sum();
                assert_eq!(fetched as u64, needed, "only the projected chunks");
                let values = decode_list(
                    &Arc::new(sparse),
                    md.column(l.leaf),
                    md.num_rows() as usize,
                    &l,
                    100 * l.dim,
                    &Arc::default(),
                )
                .unwrap();
                assert!(values.is_some(), "row group {rg} takes the fast path");
            }
            let schema = plan.projected.clone();
            let source = FastSource::Remote {
                store: store.clone(),
                key: key.clone(),
            };
            let got: Vec<RecordBatch> = FastReader::new(source, m.clone(), plan, None, 100)
                .map(|b| b.unwrap())
                .collect();
            let got = arrow_select::concat::concat_batches(&schema, &got).unwrap();
            let idx: Vec<usize> = match columns {
                None => vec![0, 1],
                Some(c) => {
                    let mut c = c.to_vec();
                    c.sort_unstable();
                    c
                }
            };
            assert_eq!(got, want.project(&idx).unwrap(), "columns {columns:?}");
        }
        // A range the metadata does not cover is an error, not a panic or a guess.
        let sparse = Sparse {
            parts: vec![(4, bytes::Bytes::from_static(b"abcd"))],
            len: 8,
        };
        assert!(sparse.get_bytes(6, 4).is_err());
        assert!(sparse.get_read(2).is_err());
        assert_eq!(&sparse.get_bytes(5, 2).unwrap()[..], b"bc");
    }

    /// The pool hands out a free buffer only where it holds the request without
    /// growing (a new allocation in disguise), and the buffer it hands out is the one
    /// that came back, not a copy.
    #[test]
    fn pool_reuses_only_buffers_that_fit() {
        let pool: Arc<Pool> = Arc::default();
        let small = pool.take(10);
        let big = pool.take(1000);
        let (small_at, big_at) = (small.as_ptr(), big.as_ptr());
        drop(leased(small, &pool));
        drop(leased(big, &pool));
        let got = pool.take(500);
        assert_eq!(
            got.as_ptr(),
            big_at,
            "the big buffer serves a smaller request"
        );
        assert!(got.is_empty() && got.capacity() >= 1000);
        let fresh = pool.take(500);
        assert_ne!(
            fresh.as_ptr(),
            small_at,
            "the small one is not grown into it"
        );
        assert!(fresh.capacity() >= 500);
        let reused = pool.take(5);
        assert_eq!(reused.as_ptr(), small_at);
    }

    /// A range of a chunked column is a view inside one buffer and a copy across
    /// buffers, with the same values either way; buffers go back to the pool.
    #[test]
    fn chunked_ranges_are_views_or_copies_of_the_same_values() {
        let pool: Arc<Pool> = Arc::default();
        let values: Vec<f32> = (0..23).map(|i| i as f32).collect();
        let parts = values
            .chunks(5)
            .map(|c| leased(c.to_vec(), &pool))
            .collect();
        let chunked = Chunked { per: 5, parts };
        for from in 0..23 {
            for len in 0..=(23 - from) {
                let got = chunked.range(from, len);
                assert_eq!(&got[..], &values[from..from + len], "{from}+{len}");
                let part = chunked.parts[from / 5][..].as_ptr_range();
                let inside = part.contains(&got.as_ptr());
                if len > 0 {
                    assert_eq!(inside, from % 5 + len <= 5, "{from}+{len}: view or copy");
                }
            }
        }
        drop(chunked);
        assert_eq!(pool.free.lock().unwrap().len(), 5);
    }

    /// Pages cut anywhere (mid-row, one value long, misaligned in memory) reach the
    /// consumer as the same whole rows, in place where aligned and copied where not.
    #[test]
    fn fed_pages_arrive_as_the_rows_they_hold() {
        let dim = 5;
        let values: Vec<f32> = (0..dim * 40).map(|i| i as f32 * 0.5 - 7.0).collect();
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        // An over-allocated buffer lets a page start at any byte offset.
        let mut backing = vec![0u8; bytes.len() + 8];
        for shift in 0..4 {
            backing[shift..shift + bytes.len()].copy_from_slice(&bytes);
            let all = &backing[shift..shift + bytes.len()];
            for cuts in [
                vec![3, 7, 12, 40],
                vec![1, 2, 3, 4, 5, 6],
                vec![5, 10, 15, 20],
                vec![40],
            ] {
                let (mut got, mut scratch, mut calls) = (Vec::new(), Vec::new(), 0);
                let mut at = 0;
                for (k, &c) in cuts.iter().cycle().enumerate() {
                    if at == values.len() {
                        break;
                    }
                    let n = (c + k % 3).min(values.len() - at);
                    feed(&mut scratch, &all[at * 4..(at + n) * 4], dim, |r| {
                        assert_eq!(r.len() % dim, 0, "whole rows only");
                        got.extend_from_slice(r);
                        calls += 1;
                    });
                    at += n;
                }
                assert!(scratch.is_empty());
                assert_eq!(got, values, "shift {shift} cuts {cuts:?}");
                assert!(calls > 0);
            }
            assert_eq!(
                as_f32(all).is_some(),
                (all.as_ptr() as usize).is_multiple_of(4)
            );
        }
    }

    /// A fused consumer that keeps the rows it is handed, and how they came.
    #[derive(Clone)]
    struct Keep {
        dim: usize,
        kept: Arc<std::sync::Mutex<Kept>>,
    }

    #[derive(Default)]
    struct Kept {
        values: Vec<f32>,
        copied: usize,
        in_place: usize,
    }

    impl Fused for Keep {
        fn column(&self) -> &str {
            "embedding"
        }
        fn start(&self, _: &[RecordBatch]) -> Option<Box<dyn FusedGroup>> {
            Some(Box::new(self.clone()))
        }
    }

    impl FusedGroup for Keep {
        fn rows(&mut self, values: &[f32]) {
            let mut k = self.kept.lock().unwrap();
            k.values.extend_from_slice(values);
            k.copied += values.len() / self.dim;
        }
        fn rows_at(&mut self, buf: &[u8], at: &[usize]) {
            let mut k = self.kept.lock().unwrap();
            for &s in at {
                let row = &buf[s..s + 4 * self.dim];
                k.values.extend(
                    row.chunks(4)
                        .map(|c| f32::from_le_bytes(c.try_into().unwrap())),
                );
            }
            k.in_place += at.len();
        }
        fn finish(self: Box<Self>, _: Vec<RecordBatch>) -> Decoded {
            Ok(vec![])
        }
    }

    /// `rows` rows of `dim` random floats (incompressible), except that with
    /// `every = Some(k)` the first fifth of every `k` rows is a short repeating pattern
    /// (snappy copies).
    fn embeddings(
        rng: &mut reclag::rng::Rng,
        rows: usize,
        dim: usize,
        every: Option<usize>,
    ) -> Vec<f32> {
        (0..rows * dim)
            .map(|i| match every {
                Some(k) if (i / dim) % k < k.div_ceil(5) => (i % 3) as f32,
                _ => rng.next_f64() as f32 - 0.5,
            })
            .collect()
    }

    /// `values` (rows of `dim`) written as a snappy v1 file with `page_rows`-row pages,
    /// then streamed to a fused consumer: the rows it got, and how many came copied and
    /// how many in place.
    fn fused(values: &[f32], dim: usize, page_rows: usize) -> (Vec<f32>, usize, usize) {
        let item = Arc::new(Field::new("item", DataType::Float32, true));
        let list = FixedSizeListArray::new(
            item,
            dim as i32,
            Arc::new(Float32Array::from(values.to_vec())),
            None,
        );
        let schema = Arc::new(arrow_schema::Schema::new(vec![Field::new(
            "embedding",
            list.data_type().clone(),
            true,
        )]));
        let b = RecordBatch::try_new(schema, vec![Arc::new(list)]).unwrap();
        // One row group: row groups are decoded concurrently, and this consumer
        // keeps one sequence.
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(None)
            .set_data_page_row_count_limit(page_rows)
            .set_write_batch_size(page_rows)
            .set_data_page_size_limit(1 << 30)
            .set_dictionary_enabled(false)
            .set_compression(parquet::basic::Compression::SNAPPY)
            .build();
        let f = tempfile::NamedTempFile::new().unwrap();
        let mut w = ArrowWriter::try_new(f.reopen().unwrap(), b.schema(), Some(props)).unwrap();
        w.write(&b).unwrap();
        w.close().unwrap();
        let keep = Keep {
            dim,
            kept: Arc::default(),
        };
        let m = meta(&f);
        let plan = plan(&m, None).unwrap().with_fused(Arc::new(keep.clone()));
        let source = FastSource::Local(f.path().to_path_buf());
        for b in FastReader::new(source, m, plan, None, 1000) {
            b.unwrap();
        }
        let k = std::mem::take(&mut *keep.kept.lock().unwrap());
        (k.values, k.copied, k.in_place)
    }

    /// Incompressible pages are read inside the snappy block, rows cut by a literal's
    /// edge included; pages whose values are partly copies, or rows longer than a
    /// literal, are written out first. Every way, the rows are the written ones.
    #[test]
    fn snappy_pages_are_read_in_place_where_they_can_be() {
        let mut rng = reclag::rng::Rng::new(4);
        // (dim, rows, page rows, k: the first fifth of every k rows compresses, expected).
        for (dim, rows, page_rows, every, want) in [
            (100usize, 2500usize, 400usize, None::<usize>, Placed::All),
            (7, 3000, 3000, None, Placed::All),
            (512, 300, 128, None, Placed::All),
            (100, 2500, 400, Some(50), Placed::Some),
            (100, 2500, 400, Some(2), Placed::None),
            // A row longer than two literals.
            (40_000, 6, 3, None, Placed::None),
        ] {
            let values = embeddings(&mut rng, rows, dim, every);
            let (got, copied, placed) = fused(&values, dim, page_rows);
            assert!(got == values, "dim {dim}: rows differ");
            assert_eq!(copied + placed, rows);
            let pages = rows.div_ceil(page_rows);
            let what = format!("dim {dim}, every {every:?}: {placed} in place, {copied} copied");
            match want {
                // Only rows cut by a page edge or in a short last literal are copied.
                Placed::All => assert!(copied <= 2 * pages, "{what}"),
                Placed::Some => assert!(placed > rows / 2 && copied > 2 * pages, "{what}"),
                Placed::None => assert_eq!(placed, 0, "{what}"),
            }
        }
    }

    enum Placed {
        All,
        Some,
        None,
    }

    #[test]
    fn rep_runs_are_decided_exactly() {
        let r = Rules {
            dim: 512,
            max_def: 1,
        };
        assert!(r.rep_run(1, 511, 1));
        assert!(!r.rep_run(1, 512, 1), "a run of 1s over a row start");
        assert!(!r.rep_run(0, 2, 1));
        assert!(r.rep_run(512, 1, 0));
        assert!(!r.rep_run(512, 2, 0), "two row starts in a row");
        assert!(!r.rep_run(3, 1, 0));
        let one = Rules { dim: 1, max_def: 1 };
        assert!(one.rep_run(0, 100, 0));
        assert!(!one.rep_run(0, 1, 1));
        // A run of one decides as the per-value rule does.
        for dim in [1, 2, 3, 512] {
            let r = Rules { dim, max_def: 1 };
            for p in 0..2 * dim + 3 {
                for v in 0..3 {
                    assert_eq!(r.rep_run(p, 1, v), r.rep(p, v), "dim {dim} p {p} v {v}");
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Any shape the writer produces reads back as written, through the fast path
        /// or the fallback.
        #[test]
        fn any_layout_reads_back_as_written(
            rows in 0usize..600,
            dim in 1usize..40,
            rg in 1usize..300,
            page_rows in 1usize..80,
            v2 in any::<bool>(),
            dict in any::<bool>(),
            snappy in any::<bool>(),
            item_nullable in any::<bool>(),
            nulls in proptest::option::of(2usize..9),
            batch_rows in 1usize..200,
        ) {
            let case = Case { rows, dim, rg, page_rows, v2, dict, snappy, item_nullable, null_every: nulls };
            let (f, want) = write(&case);
            let (got, _) = fast(&f, batch_rows);
            prop_assert_eq!(got, want);
        }

        /// Any page layout, compressible or not, reaches a fused consumer as the rows
        /// written, whether they were read in place, written out, or both.
        #[test]
        fn fused_pages_deliver_the_rows_written(
            dim in 1usize..300,
            rows in 1usize..1500,
            page_rows in 1usize..400,
            every in proptest::option::of(2usize..40),
            seed in 0u64..1000,
        ) {
            let mut rng = reclag::rng::Rng::new(seed);
            let values = embeddings(&mut rng, rows, dim, every);
            let (got, copied, placed) = fused(&values, dim, page_rows);
            prop_assert_eq!(copied + placed, rows);
            prop_assert!(got == values);
        }

        /// Corrupt bytes anywhere give an error or a fallback, never a panic or rows
        /// that differ silently in count.
        #[test]
        fn corrupt_pages_never_panic(at in 0.0f64..1.0, byte in any::<u8>(), dict in any::<bool>()) {
            let case = Case { rows: 300, dim: 16, rg: 100, page_rows: 50, v2: false, dict, snappy: false, item_nullable: true, null_every: None };
            let (f, _) = write(&case);
            let mut bytes = std::fs::read(f.path()).unwrap();
            let n = bytes.len();
            let footer = u32::from_le_bytes(bytes[n - 8..n - 4].try_into().unwrap()) as usize;
            let pos = 4 + ((n - 12 - footer) as f64 * at) as usize;
            bytes[pos] = byte;
            std::fs::write(f.path(), &bytes).unwrap();
            let m = meta(&f);
            let plan = plan(&m, None).unwrap();
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                FastReader::new(FastSource::Local(f.path().to_path_buf()), m, plan, None, 64).try_fold(0usize, |acc, b| b.map(|b| acc + b.num_rows()))
            }));
            let r = r.expect("no panic escapes the reader");
            if let Ok(rows) = r {
                prop_assert_eq!(rows, 300);
            }
        }
    }
}
