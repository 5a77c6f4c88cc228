//! Which partitions a run considers: hive or time-window partitions found in the lake,
//! minus those already done or not selected.

use super::*;
use crate::error::{Error, Result};
use crate::store::Location;

/// A partition: its value (`2026-11-21`) and where its rows are.
pub(super) struct Partition {
    pub(super) value: String,
    pub(super) source: PartSource,
}

pub(super) enum PartSource {
    /// A hive directory.
    Dir(Location),
    /// A time window: row groups of files, and a filter on the timestamp column.
    Window(window::TimeWindows, window::Window),
    /// A time window already in the state (its rows are not looked at again).
    Done,
}

impl Partition {
    pub(super) fn describe(&self) -> String {
        match &self.source {
            PartSource::Dir(dir) => dir.display.clone(),
            _ => format!("window {}", self.value),
        }
    }
}

/// A file and the row groups to read (all when `None`).
pub(super) type FileRowGroups = (Location, Option<Vec<usize>>);

/// The partitions a run can see, and time windows that are not closed yet.
pub(super) struct Found {
    pub(super) parts: Vec<Partition>,
    pub(super) pending: Vec<String>,
}

/// What processing a partition produced.
/// A partition's time window: its layout and index; `None` for a hive partition.
pub(super) type Window<'p> = Option<(&'p window::TimeWindows, i64)>;

impl DriftJob {
    pub(super) fn selected(&self, value: &str) -> bool {
        match &self.select {
            Select::All => true,
            Select::Only(v) => value == v,
            Select::Since(v) => value >= v.as_str(),
        }
    }

    pub(super) fn partitions(&self, state: &State, now: i64) -> Result<Found> {
        let root = self
            .stores
            .locate(self.spec.source.url.trim_end_matches('/'))?;
        let key = match self.spec.partitioning().map_err(Error::Usage)? {
            Partitioning::Hive { key } => key,
            Partitioning::Time(tw) => return self.windows(&root, &tw, state, now),
        };
        let prefix = format!("{key}=");
        let mut parts = Vec::new();
        for dir in root.list_dirs()? {
            let Some(name) = dir.filename() else { continue };
            let Some(value) = name.strip_prefix(&prefix) else {
                continue;
            };
            parts.push(Partition {
                value: value.to_string(),
                source: PartSource::Dir(root.child(dir.clone())),
            });
        }
        if parts.is_empty() {
            return Err(Error::Usage(format!(
                "{}: no partitions {prefix}VALUE below it; check source.url and source.partitioning",
                root.display
            )));
        }
        parts.sort_by(|a, b| a.value.cmp(&b.value));
        Ok(Found {
            parts,
            pending: vec![],
        })
    }

    /// The closed, selected time windows not yet in the state (found from the
    /// timestamp column), plus the state's windows, so `--partition` and the summary
    /// see every window the job knows.
    pub(super) fn windows(
        &self,
        root: &Location,
        tw: &window::TimeWindows,
        state: &State,
        now: i64,
    ) -> Result<Found> {
        let files = crate::io::parquet_files_below(root)?;
        if files.is_empty() {
            return Err(Error::Usage(format!(
                "{}: no Parquet files below it; check source.url",
                root.display
            )));
        }
        let found = tw.discover(&files, |w| {
            let label = tw.label(w);
            !state.partitions.contains_key(&label) && self.selected(&label)
        })?;
        let mut parts: Vec<Partition> = state
            .partitions
            .keys()
            .map(|value| Partition {
                value: value.clone(),
                source: PartSource::Done,
            })
            .collect();
        let mut pending = vec![];
        for (index, w) in found {
            if tw.closed(index, now) {
                parts.push(Partition {
                    value: tw.label(index),
                    source: PartSource::Window(tw.clone(), w),
                });
            } else {
                pending.push(tw.label(index));
            }
        }
        parts.sort_by(|a, b| a.value.cmp(&b.value));
        Ok(Found { parts, pending })
    }
}
