//! [`FastReader`]: schedules row groups over decoding threads and returns their
//! batches in file order.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender};
use std::thread::JoinHandle;

use arrow_schema::SchemaRef;
use parquet::arrow::arrow_reader::ArrowReaderMetadata;
use parquet::errors::ParquetError;

use crate::fetch::Source;
use crate::fused::Part;
use crate::plan::Plan;
use crate::pool::Pool;
use crate::row_group::row_group;

/// Decoded bytes a reader's row groups in flight may hold together by default: one row
/// group per core would hold 8 GiB of 128 MiB row groups on 64 cores, where eight
/// already keep the consumer fed. A fused list is never held, so a fused consumer still
/// gets a row group per core.
pub const IN_FLIGHT_BYTES: u64 = 1 << 30;

/// Row groups decoding at once unless set with [`FastReader::in_flight`]: one per core
/// (the consumer's work, scoring or encoding, riding on the same threads) as long as
/// row groups of `largest` decoded bytes fit in [`IN_FLIGHT_BYTES`], and never fewer
/// than two, which keep two cores busy and overlap a fetch with decoding.
pub fn default_in_flight(largest: u64) -> usize {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    in_flight_within(cores, largest)
}

pub(crate) fn in_flight_within(cores: usize, largest: u64) -> usize {
    let fit = (IN_FLIGHT_BYTES / largest.max(1)) as usize;
    cores.min(fit).max(2)
}

/// Record batches of the given row groups, the list columns decoded by the fast path
/// (or handed to the plan's [`crate::Fused`] consumer, whose results come back as
/// [`Part::Fused`]). Readers of several files can be chained ([`FastReader::then`]) so
/// that row groups keep decoding across file boundaries.
pub struct FastReader<T = std::convert::Infallible> {
    files: Vec<FileToRead<T>>,
    batch_rows: usize,
    in_flight: usize,
    /// Row groups not yet returned, in output order.
    pub(crate) pending: VecDeque<FileRowGroup>,
    /// Row groups not yet started, in start order (see [`start_order`]).
    pub(crate) start: VecDeque<FileRowGroup>,
    running: Vec<(FileRowGroup, Decoding<T>)>,
    /// Row groups whose decoder has finished, announced on `done_rx`.
    finished: Vec<FileRowGroup>,
    done_tx: Sender<FileRowGroup>,
    done_rx: Receiver<FileRowGroup>,
    ready: VecDeque<(usize, Part<T>)>,
    pool: Arc<Pool>,
}

/// One file of a [`FastReader`].
struct FileToRead<T> {
    source: Source,
    meta: ArrowReaderMetadata,
    plan: Arc<Plan<T>>,
}

/// A row group of one of a reader's files: `(file, row group)`.
type FileRowGroup = (usize, usize);

/// The thread decoding one row group.
type Decoding<T> = JoinHandle<crate::Result<Vec<Part<T>>>>;

/// The order to start row groups in: output order, except that a short last row
/// group starts second. Started last, it finishes early and leaves one core idle
/// while the full row group beside it runs to its end (measured as 40 ms of a
/// 0.8 s run); started second, the last two to finish are full ones. Its decoded
/// batches wait for their turn, which holds one short row group at most.
fn start_order<T>(
    files: &[FileToRead<T>],
    order: &VecDeque<FileRowGroup>,
) -> VecDeque<FileRowGroup> {
    let rows = |(f, rg): FileRowGroup| files[f].meta.metadata().row_group(rg).num_rows();
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

impl<T: Send + 'static> FastReader<T> {
    pub fn new(
        source: Source,
        meta: ArrowReaderMetadata,
        plan: Plan<T>,
        row_groups: Option<Vec<usize>>,
        batch_rows: usize,
    ) -> Self {
        let n = meta.metadata().num_row_groups();
        let pending: VecDeque<FileRowGroup> = row_groups
            .unwrap_or_else(|| (0..n).collect())
            .into_iter()
            .map(|rg| (0, rg))
            .collect();
        let files = vec![FileToRead {
            source,
            meta,
            plan: Arc::new(plan),
        }];
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let largest = pending
            .iter()
            .map(|&(_, rg)| files[0].plan.row_group_bytes(&files[0].meta, rg))
            .max()
            .unwrap_or(0);
        let in_flight = default_in_flight(largest);
        FastReader {
            start: start_order(&files, &pending),
            files,
            pending,
            batch_rows,
            in_flight,
            running: Vec::new(),
            finished: Vec::new(),
            done_tx,
            done_rx,
            ready: VecDeque::new(),
            pool: Arc::new(Pool::for_in_flight(in_flight)),
        }
    }

    /// Decodes `n` row groups at once (at least one). Each holds its decoded columns
    /// until consumed, so memory grows with `n`.
    pub fn in_flight(mut self, n: usize) -> Self {
        debug_assert!(self.running.is_empty());
        self.in_flight = n.max(1);
        self.pool = Arc::new(Pool::for_in_flight(self.in_flight));
        self
    }

    /// Row groups decoding at once.
    pub fn row_groups_in_flight(&self) -> usize {
        self.in_flight
    }

    /// This reader's row groups, then `next`'s (a reader not yet read from). With one
    /// reader per file, a file of one row group would decode on one core, and every
    /// file's last row group would run alone (a lake of sixteen 65k-row files scored
    /// 1.7 times slower than the same rows in one file).
    /// Both readers must be unread.
    pub fn then(mut self, next: FastReader<T>) -> Self {
        debug_assert!(self.running.is_empty() && self.ready.is_empty());
        debug_assert!(next.running.is_empty() && next.ready.is_empty());
        let base = self.files.len();
        // The chain keeps the smaller of the two settings: the larger row groups'
        // budget, or what the caller set on both.
        self.in_flight = self.in_flight.min(next.in_flight);
        self.pool = Arc::new(Pool::for_in_flight(self.in_flight));
        self.files.extend(next.files);
        let next_pending = next.pending.into_iter().map(|(f, rg)| (base + f, rg));
        self.pending.extend(next_pending);
        self.start = start_order(&self.files, &self.pending);
        self
    }

    pub fn schema(&self) -> SchemaRef {
        self.files[0].plan.projected.clone()
    }

    fn spawn(&mut self, unit: FileRowGroup) {
        let file = &self.files[unit.0];
        let source = file.source.clone();
        let meta = file.meta.clone();
        let plan = file.plan.clone();
        let batch_rows = self.batch_rows;
        let pool = self.pool.clone();
        let done = self.done_tx.clone();
        let handle = std::thread::spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                row_group(&source, &meta, &plan, unit.1, batch_rows, &pool)
            }))
            .unwrap_or_else(|_| {
                Err(ParquetError::General(
                    "a data page could not be decoded".into(),
                ))
            });
            // The reader may be gone (it stopped on an error); nothing waits then.
            let _ = done.send(unit);
            r
        });
        self.running.push((unit, handle));
    }

    /// The next item and the index of its file among the chained readers.
    pub fn next_from(&mut self) -> Option<(usize, crate::Result<Part<T>>)> {
        loop {
            if let Some((f, b)) = self.ready.pop_front() {
                return Some((f, Ok(b)));
            }
            let want = *self.pending.front()?;
            // Wait for the next row group in order, starting another whenever a
            // decoder finishes, so `in_flight` keep running even while a short row
            // group that finished early waits for its turn. `want` is started by this
            // loop at the latest: the start order only moves the last row group
            // earlier, so every unit before `want` in it has been started.
            loop {
                while let Ok(u) = self.done_rx.try_recv() {
                    self.finished.push(u);
                }
                let busy = self.running.len() - self.finished.len();
                if busy < self.in_flight
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
                Ok(Ok(parts)) => {
                    self.ready.extend(parts.into_iter().map(|b| (want.0, b)));
                    continue;
                }
                Ok(Err(e)) => e,
                Err(_) => ParquetError::General("the decoding thread failed".into()),
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

impl<T: Send + 'static> Iterator for FastReader<T> {
    type Item = crate::Result<Part<T>>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_from().map(|(_, b)| b)
    }
}
