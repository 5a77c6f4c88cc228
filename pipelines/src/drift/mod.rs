//! `reclag drift run`: score each new partition of a lake, test its OOD rate against
//! the model's calibrated rate, and publish metrics, the worst rows and a report.
//!
//! Every output is a pure function of (spec, model, partition data), and each is
//! written whole under its final name (temporary name + rename on disk, a single PUT
//! on object stores). The state file, written last for each partition, only records
//! which partitions are done. So a run killed at any point and rerun rewrites the same
//! bytes for the partition it was in and never duplicates a row.
//!
//! The job is here (its settings, builder and `run`); each concern has its file:
//! `spec` (the job file), `discover` and `window` (which partitions), `gather` and
//! `fused` (scoring them), `worst` (the worst rows), `stats` (the tests), `metrics`
//! (the verdict and the metrics table), `state` (what is done), `lock`, `report`,
//! `webhook` and `watch`.

mod discover;
mod fused;
mod gather;
pub mod lock;
mod metrics;
pub mod report;
pub mod spec;
mod state;
pub mod stats;
pub mod watch;
pub mod webhook;
pub mod window;
mod worst;

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::store::{Location, Stores};
use discover::*;
use gather::*;
pub use metrics::*;
pub use spec::{DriftSpec, Partitioning};
pub use state::*;
use worst::*;

/// Exit code of a run that found drift (0: none, 1: error).
pub const EXIT_DRIFT: u8 = 2;
pub const STATE_FILE: &str = "_state.json";

/// [`DriftJob::lock_wait`]'s default: long enough for a backfill started beside a
/// nightly run to queue behind it, short enough that a hung run is noticed.
pub const DEFAULT_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(600);
/// The score's column in the worst rows.
const WORST_SCORE: &str = "reclag_score";
/// Score quantiles kept per partition for the report's histograms (0.5 % steps).
const QUANTILES: usize = 201;

/// Which partitions a run considers; partitions already processed are skipped in every
/// mode, so reruns add nothing.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Select {
    #[default]
    All,
    Only(String),
    Since(String),
}

/// Called with a checkpoint name (`"metrics:<partition>"`, `"worst:<partition>"`,
/// `"state:<partition>"`) after that output is written; returning `true` stops the run
/// there as if the process had died. Crash tests use it.
pub type FaultHook = Arc<dyn Fn(&str) -> bool + Send + Sync>;
/// The run's notion of now. It decides which time windows have closed (and the
/// summary's start time), never what an output holds: each output is a function of
/// its window's rows alone, so reruns stay byte-identical.
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// A drift run: build with [`DriftJob::new`], adjust, then [`DriftJob::run`].
pub struct DriftJob {
    spec: DriftSpec,
    stores: Arc<Stores>,
    select: Select,
    dry_run: bool,
    clock: Clock,
    fault: Option<FaultHook>,
    cancel: Option<Arc<std::sync::atomic::AtomicBool>>,
    fused: bool,
    strict: bool,
    lock_wait: std::time::Duration,
    lock_stale_after: std::time::Duration,
}

/// Bins of the p-value histograms.
pub const P_BINS: usize = 20;

/// A reference group with fewer rows than this uses the overall reference rate.
const MIN_REFERENCE_GROUP_ROWS: u64 = 20;

impl DriftJob {
    pub fn new(spec: DriftSpec, stores: Arc<Stores>) -> Self {
        DriftJob {
            spec,
            stores,
            select: Select::All,
            dry_run: false,
            clock: Arc::new(SystemTime::now),
            fault: None,
            cancel: None,
            fused: crate::io::read_settings().fused,
            strict: false,
            lock_wait: DEFAULT_LOCK_WAIT,
            lock_stale_after: lock::DEFAULT_STALE_AFTER,
        }
    }

    /// How long an object-store lock may go without its holder's heartbeat before a
    /// waiting run takes it over (a run killed with `kill -9` leaves its lock behind).
    pub fn lock_stale_after(mut self, after: std::time::Duration) -> Self {
        self.lock_stale_after = after;
        self
    }

    /// How long a run waits for another run on the same output to finish before it
    /// exits naming that run ([`lock`]).
    pub fn lock_wait(mut self, wait: std::time::Duration) -> Self {
        self.lock_wait = wait;
        self
    }

    /// Makes a partition that would be skipped (no files, a missing column, a file
    /// that cannot be read) fail the run instead; the partitions before it are still
    /// published.
    pub fn strict(mut self, strict: bool) -> Self {
        self.strict = strict;
        self
    }

    pub fn select(mut self, select: Select) -> Self {
        self.select = select;
        self
    }

    pub fn dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }

    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    pub fn fault_hook(mut self, hook: FaultHook) -> Self {
        self.fault = Some(hook);
        self
    }

    /// When the flag is set the run stops before its next partition; everything it
    /// finished stays committed (SIGTERM handling for `watch`).
    pub fn cancel_flag(mut self, flag: Arc<std::sync::atomic::AtomicBool>) -> Self {
        self.cancel = Some(flag);
        self
    }

    /// Whether row groups the fast reader takes are scored page by page as they are
    /// decoded (the default; `RECLAG_FUSED=0` turns it off) or built into Arrow
    /// batches first. Both give the same bytes; tests compare them.
    pub fn fused(mut self, on: bool) -> Self {
        self.fused = on;
        self
    }

    pub fn spec(&self) -> &DriftSpec {
        &self.spec
    }

    fn out(&self, rel: &str) -> Result<Location> {
        let base = self.spec.output.url.trim_end_matches('/');
        self.stores.locate(&format!("{base}/{rel}"))
    }

    fn checkpoint(&self, name: &str) -> Result<()> {
        if self.fault.as_ref().is_some_and(|f| f(name)) {
            return Err(Error::Usage(format!("fault injected after {name}")));
        }
        Ok(())
    }

    /// Runs the job: every selected partition not yet in the state, in order.
    pub fn run(&self) -> Result<DriftSummary> {
        let started = (self.clock)()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let (model, _) = crate::store::load_model_from(&self.stores, &self.spec.model.url)
            .map_err(|e| Error::Usage(format!("model.url: {e}")))?;
        let sha = reclag::format::checksum(&model);
        // Held from before the state is read until the run ends, so a concurrent run
        // sees every partition this one records.
        let _lock = match self.dry_run {
            true => None,
            false => Some(lock::RunLock::acquire_with(
                &self.out(lock::LOCK_FILE)?,
                self.lock_wait,
                self.lock_stale_after,
                &lock::this_run(started),
            )?),
        };
        let mut state = self.load_state()?;
        if !state.model_sha256.is_empty() && state.model_sha256 != sha {
            return Err(Error::ModelChanged {
                output: self.spec.output.url.clone(),
                recorded: state.model_sha256.clone(),
                found: sha,
            });
        }
        state.model_sha256 = sha.clone();
        let Found {
            parts: all,
            pending,
        } = self.partitions(&state, started as i64)?;
        if let Some(r) = &self.spec.reference {
            let desc = r.describe();
            match &state.reference {
                Some(have) if have.url == desc => {}
                Some(have) => {
                    return Err(Error::ReferenceChanged {
                        output: self.spec.output.url.clone(),
                        recorded: have.url.clone(),
                        found: desc,
                    });
                }
                None if !self.dry_run => {
                    state.reference = Some(self.measure_reference(&model, r, &all)?)
                }
                None => {}
            }
        }
        let is_reference = |v: &str| self.spec.reference.as_ref().is_some_and(|r| r.holds(v));
        if let Select::Only(p) = &self.select
            && is_reference(p)
        {
            return Err(Error::Usage(format!(
                "--partition {p}: it is part of the reference ({}), the baseline the other partitions are judged against",
                self.spec
                    .reference
                    .as_ref()
                    .map(|r| r.describe())
                    .unwrap_or_default()
            )));
        }
        let all: Vec<Partition> = all
            .into_iter()
            .filter(|p| !is_reference(&p.value))
            .collect();
        let known: Vec<&str> = all.iter().map(|p| p.value.as_str()).collect();
        if let Select::Only(p) = &self.select
            && !known.contains(&p.as_str())
        {
            return Err(Error::Usage(format!(
                "--partition {p}: no such partition (found: {})",
                known.join(", ")
            )));
        }
        let selected: Vec<&Partition> = all.iter().filter(|p| self.selected(&p.value)).collect();
        let already_done = selected
            .iter()
            .filter(|p| state.partitions.contains_key(&p.value))
            .count();
        let todo: Vec<&Partition> = selected
            .into_iter()
            .filter(|p| !state.partitions.contains_key(&p.value))
            .collect();
        let mut summary = DriftSummary {
            started_at_unix: started,
            source: self.spec.source.url.clone(),
            output: self.spec.output.url.clone(),
            model_sha256: sha,
            dry_run: self.dry_run,
            partitions: todo.iter().map(|p| p.value.clone()).collect(),
            skipped: vec![],
            drifted: vec![],
            already_done,
            baseline: baseline(&model, &self.spec, state.reference.as_ref()),
            pending,
            drift: false,
            interrupted: false,
            webhook: None,
        };
        if self.dry_run {
            return Ok(summary);
        }
        // From here on, `partitions` lists what this run actually processed.
        summary.partitions.clear();
        let bar = crate::progress::bar(todo.len() as u64, "partitions", "drift");
        // Commits one partition's outputs, in order; `false` once cancelled.
        let mut commit =
            |part: &Partition, processed: Processed, state: &mut State| -> Result<bool> {
                if let Some(l) = &_lock {
                    l.check()?;
                }
                if self
                    .cancel
                    .as_ref()
                    .is_some_and(|c| c.load(std::sync::atomic::Ordering::SeqCst))
                {
                    summary.interrupted = true;
                    return Ok(false);
                }
                let record = match processed {
                    Processed::Skipped(reason) if self.strict => {
                        return Err(Error::StrictSkip {
                            partition: part.value.clone(),
                            reason,
                        });
                    }
                    Processed::Skipped(reason) => {
                        let r = PartitionRecord {
                            partition: part.value.clone(),
                            status: PartitionStatus::Skipped,
                            reason: Some(reason),
                            rows: 0,
                            ood_rows: 0,
                            ood_rate: 0.0,
                            expected_rate: 0.0,
                            p_value: 1.0,
                            drift: false,
                            drift_groups: vec![],
                            score_quantiles: vec![],
                            low_p_rate: None,
                            p_histogram: vec![],
                            groups: vec![],
                            worst: vec![],
                        };
                        summary.skipped.push((&r).into());
                        r
                    }
                    Processed::Done {
                        record,
                        metrics,
                        worst,
                    } => {
                        let name = format!("part-{}.parquet", file_safe(&part.value));
                        self.out(&format!("metrics/{name}"))?
                            .put(parquet_bytes(&metrics)?)?;
                        self.checkpoint(&format!("metrics:{}", part.value))?;
                        if let Some(w) = worst {
                            self.out(&format!("worst/{name}"))?
                                .put(parquet_bytes(&w)?)?;
                        }
                        self.checkpoint(&format!("worst:{}", part.value))?;
                        if record.drift {
                            summary.drifted.push(record.as_ref().into());
                        }
                        *record
                    }
                };
                summary.partitions.push(part.value.clone());
                state.partitions.insert(part.value.clone(), record);
                self.save_state(state)?;
                self.checkpoint(&format!("state:{}", part.value))?;
                bar.inc(1);
                Ok(true)
            };
        let routing = self.routing();
        let mut rest: &[&Partition] = &todo;
        while !rest.is_empty() {
            let chain = &rest[..rest.len().min(CHAINED_PARTITIONS)];
            // A partition that was skipped or failed to open is read as no files; its
            // verdict (or error) is committed in its turn, after the ones before it.
            let mut reads = Vec::with_capacity(chain.len());
            let mut not_read: Vec<Option<Result<Processed>>> = Vec::with_capacity(chain.len());
            for part in chain {
                let (files, window, verdict) = match self.prepare(&model, part) {
                    Ok(Prepared::Ready(files, window)) => (files, window, None),
                    Ok(Prepared::Skipped(reason)) => {
                        (vec![], None, Some(Ok(Processed::Skipped(reason))))
                    }
                    Err(e) => (vec![], None, Some(Err(e))),
                };
                reads.push((files, window));
                not_read.push(verdict);
            }
            let files_in: Vec<usize> = reads.iter().map(|(f, _)| f.len()).collect();
            let mut go_on = true;
            let unreadable =
                self.accumulate(&model, &routing, reads, self.spec.report.top_k, |i, g| {
                    let processed = match not_read[i].take() {
                        Some(verdict) => verdict?,
                        None => self.conclude(&model, chain[i], &state, files_in[i], g)?,
                    };
                    go_on = commit(chain[i], processed, &mut state)?;
                    Ok(go_on)
                })?;
            if !go_on {
                break;
            }
            rest = match unreadable {
                None => &rest[chain.len()..],
                // The partitions before the unreadable one are committed; it is
                // skipped with the reason, and the next chain starts after it.
                Some((p, e)) => {
                    let reason = format!("could not be read: {e}");
                    if !commit(chain[p], Processed::Skipped(reason), &mut state)? {
                        break;
                    }
                    &rest[p + 1..]
                }
            };
        }
        bar.finish_and_clear();
        let html = report::render(&self.spec, &state, &summary.baseline);
        self.out("report.html")?.put(Bytes::from(html))?;
        summary.drift = !summary.drifted.is_empty();
        if let Some(w) = &self.spec.webhook
            && (summary.drift || w.on == "always")
        {
            summary.webhook = Some(match webhook::post(w, &summary.json_line()) {
                Ok(attempts) => format!("delivered (attempt {attempts})"),
                Err(e) => {
                    eprintln!("warning: {e}");
                    format!("failed: {e}")
                }
            });
        }
        Ok(summary)
    }
}
