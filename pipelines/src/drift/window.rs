//! Time-window partitions (`partitioning = "time:COLUMN"`): a flat lake whose rows
//! carry a timestamp is cut into fixed UTC windows aligned to the Unix epoch, so a
//! 1-day window is a calendar day in UTC.
//!
//! Discovery must stay cheap as the lake grows for years: row-group statistics of the
//! timestamp column rule out every row group whose windows are all done (or not
//! selected), so a nightly run reads the footers of old files but none of their pages.
//! The remaining row groups are read for the timestamp column alone, which gives each
//! window's exact rows and the row groups that hold them; scoring later reads only
//! those row groups.

use std::collections::{BTreeMap, BTreeSet};

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Date64Type, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType,
};
use arrow_array::{Array, ArrayRef};
use arrow_schema::{DataType, TimeUnit};
use parquet::arrow::arrow_reader::statistics::StatisticsConverter;

use crate::error::{Error, Result};
use crate::io::ParquetFile;
use crate::store::Location;

/// A row group whose statistics span more windows than this is read without
/// checking each window against the state (a wrong or missing statistic).
const MAX_WINDOWS_PER_ROW_GROUP: i64 = 100_000;

/// The window layout of a `time:` source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeWindows {
    pub column: String,
    /// Window length in seconds.
    pub window: i64,
    /// A window is processed once `now ≥ end + lateness`, so rows that arrive late
    /// still land in it.
    pub lateness: i64,
}

/// One window found in the data: its rows and the row groups that hold them.
#[derive(Debug, Clone)]
pub struct Window {
    pub index: i64,
    pub rows: u64,
    /// Files (sorted) and, for each, the row groups (ascending) to read.
    pub files: Vec<(Location, Vec<usize>)>,
}

impl TimeWindows {
    /// The partition value of window `index`: `2026-11-21` for whole-day windows,
    /// `2026-11-21T06:00Z` for minute-aligned ones, with seconds otherwise. Values sort
    /// as times do, so `--since` compares them as text.
    pub fn label(&self, index: i64) -> String {
        let start = index.saturating_mul(self.window);
        let format = if self.window % 86_400 == 0 {
            "%Y-%m-%d"
        } else if self.window % 60 == 0 {
            "%Y-%m-%dT%H:%MZ"
        } else {
            "%Y-%m-%dT%H:%M:%SZ"
        };
        match chrono::DateTime::from_timestamp(start, 0) {
            Some(t) => t.format(format).to_string(),
            // Beyond chrono's ±262,000 years: the Unix seconds, still unique.
            None => format!("{start}s"),
        }
    }

    /// Whether window `index` has ended (plus lateness) at `now` (Unix seconds).
    pub fn closed(&self, index: i64, now: i64) -> bool {
        (index + 1) * self.window + self.lateness <= now
    }

    /// The window of each row (`None` for a null timestamp), appended to `out`.
    pub fn indices(&self, array: &ArrayRef, out: &mut Vec<Option<i64>>) {
        out.clear();
        match seconds(array) {
            Some(secs) => out.extend(secs.map(|s| s.map(|s| s.div_euclid(self.window)))),
            None => out.resize(array.len(), None),
        }
    }

    /// Finds the windows in `files` that `wanted` accepts. Each file is checked
    /// (footer) for a timestamp column before any page is read.
    pub fn discover(
        &self,
        files: &[Location],
        wanted: impl Fn(i64) -> bool,
    ) -> Result<BTreeMap<i64, Window>> {
        let mut found: BTreeMap<i64, (u64, BTreeMap<usize, BTreeSet<usize>>)> = BTreeMap::new();
        let mut idx = Vec::new();
        for (fi, loc) in files.iter().enumerate() {
            let file = ParquetFile::open(loc)?;
            let ci = file.column_index(&self.column)?;
            let dt = file.schema.field(ci).data_type().clone();
            if !is_time(&dt) {
                return Err(Error::Usage(format!(
                    "{}: column '{}' is {dt}; source.partitioning = 'time:{}' expects a timestamp or date column (e.g. Timestamp(Microsecond, \"UTC\")); use hive:KEY for directory partitions",
                    file.path.display(),
                    self.column,
                    self.column
                )));
            }
            let Some((meta, pschema)) = file.metadata() else {
                continue;
            };
            let ranges = self.row_group_windows(&file, meta, pschema);
            let sizes: Vec<u64> = meta
                .row_groups()
                .iter()
                .map(|rg| rg.num_rows().max(0) as u64)
                .collect();
            let cands: Vec<usize> = ranges
                .iter()
                .enumerate()
                .filter(|(_, r)| match r {
                    Some((lo, hi)) if hi - lo <= MAX_WINDOWS_PER_ROW_GROUP => {
                        (*lo..=*hi).any(&wanted)
                    }
                    _ => true,
                })
                .map(|(i, _)| i)
                .collect();
            if cands.is_empty() {
                continue;
            }
            // Rows arrive in the order of `cands`; a batch can span row groups, so the
            // row group of each row comes from the running row count.
            let mut bounds = Vec::with_capacity(cands.len());
            let mut acc = 0u64;
            for &rg in &cands {
                acc += sizes[rg];
                bounds.push(acc);
            }
            // Consecutive rows of one window and row group form a run; `wanted` (a
            // label and a state lookup) and the maps are touched once per run, not per
            // row.
            let mut pos = 0u64;
            let mut at = 0usize;
            let mut run: Option<(i64, usize, u64)> = None;
            let mut flush = |run: Option<(i64, usize, u64)>| {
                if let Some((w, rg, n)) = run
                    && wanted(w)
                {
                    let e = found.entry(w).or_default();
                    e.0 += n;
                    e.1.entry(fi).or_default().insert(rg);
                }
            };
            for batch in file.with_row_groups(cands.clone()).read(Some(&[ci]))? {
                let batch = batch?;
                self.indices(batch.column(0), &mut idx);
                for w in &idx {
                    while at + 1 < bounds.len() && pos >= bounds[at] {
                        at += 1;
                    }
                    pos += 1;
                    let Some(w) = *w else { continue };
                    match &mut run {
                        Some((rw, rrg, n)) if *rw == w && *rrg == cands[at] => *n += 1,
                        _ => flush(run.replace((w, cands[at], 1))),
                    }
                }
            }
            flush(run);
        }
        Ok(found
            .into_iter()
            .map(|(index, (rows, by_file))| {
                let files = by_file
                    .into_iter()
                    .map(|(fi, rgs)| (files[fi].clone(), rgs.into_iter().collect()))
                    .collect();
                (index, Window { index, rows, files })
            })
            .collect())
    }

    /// Each row group's window range from its statistics; `None` where the statistics
    /// are missing, so the row group is read.
    fn row_group_windows(
        &self,
        file: &ParquetFile,
        meta: &parquet::file::metadata::ParquetMetaData,
        pschema: &parquet::schema::types::SchemaDescriptor,
    ) -> Vec<Option<(i64, i64)>> {
        let n = meta.num_row_groups();
        let stats = StatisticsConverter::try_new(&self.column, &file.schema, pschema)
            .and_then(|c| {
                Ok((
                    c.row_group_mins(meta.row_groups())?,
                    c.row_group_maxes(meta.row_groups())?,
                ))
            })
            .ok();
        let Some((mins, maxes)) = stats else {
            return vec![None; n];
        };
        match (seconds(&mins), seconds(&maxes)) {
            (Some(lo), Some(hi)) => lo
                .zip(hi)
                .map(|(lo, hi)| Some((lo?.div_euclid(self.window), hi?.div_euclid(self.window))))
                .collect(),
            _ => vec![None; n],
        }
    }
}

/// Timestamps of any unit (a time zone changes only how an instant is shown) and
/// dates.
pub fn is_time(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Timestamp(_, _) | DataType::Date32 | DataType::Date64
    )
}

/// Unix seconds (floored) of each value of a timestamp or date array.
fn seconds(a: &ArrayRef) -> Option<Box<dyn Iterator<Item = Option<i64>> + '_>> {
    fn scale<'a, T: arrow_array::ArrowPrimitiveType>(
        a: &'a ArrayRef,
        f: impl Fn(T::Native) -> i64 + 'a,
    ) -> Box<dyn Iterator<Item = Option<i64>> + 'a> {
        Box::new(a.as_primitive::<T>().iter().map(move |v| v.map(&f)))
    }
    Some(match a.data_type() {
        DataType::Timestamp(TimeUnit::Second, _) => scale::<TimestampSecondType>(a, |v| v),
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            scale::<TimestampMillisecondType>(a, |v| v.div_euclid(1_000))
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            scale::<TimestampMicrosecondType>(a, |v| v.div_euclid(1_000_000))
        }
        DataType::Timestamp(TimeUnit::Nanosecond, _) => {
            scale::<TimestampNanosecondType>(a, |v| v.div_euclid(1_000_000_000))
        }
        DataType::Date32 => scale::<Date32Type>(a, |v| i64::from(v) * 86_400),
        DataType::Date64 => scale::<Date64Type>(a, |v| v.div_euclid(1_000)),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar
    /// (Howard Hinnant's `civil_from_days`): the hand-written calendar the labels used
    /// before chrono, kept as the reference chrono's labels must equal.
    fn civil_from_days(z: i64) -> (i64, u32, u32) {
        let z = z + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let y = yoe + era * 400 + i64::from(m <= 2);
        (y, m, d)
    }

    /// The labels the hand-written calendar gave, for every layout.
    fn reference_label(l: &TimeWindows, index: i64) -> String {
        let start = index * l.window;
        let (y, m, d) = civil_from_days(start.div_euclid(86_400));
        let sod = start.rem_euclid(86_400);
        let (hh, mm, ss) = (sod / 3600, sod % 3600 / 60, sod % 60);
        if l.window % 86_400 == 0 {
            format!("{y:04}-{m:02}-{d:02}")
        } else if l.window % 60 == 0 {
            format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}Z")
        } else {
            format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
        }
    }

    /// chrono's labels equal the hand-written calendar's: every day from 1900 to 2200,
    /// and hour, minute and odd-second windows around leap days and year ends.
    #[test]
    fn chrono_labels_equal_the_hand_written_calendar() {
        let day = layout(86_400);
        for z in -25_567..84_000 {
            assert_eq!(day.label(z), reference_label(&day, z), "day {z}");
        }
        for window in [3_600, 900, 60, 90, 7, 86_400 * 7] {
            let l = layout(window);
            for anchor in [0i64, 11_016, 11_322, 20_778, -1, 47_541] {
                let first = anchor * 86_400 / window - 50;
                for i in first..first + 3 * 86_400 / window + 100 {
                    assert_eq!(
                        l.label(i),
                        reference_label(&l, i),
                        "window {window} index {i}"
                    );
                }
            }
        }
    }

    fn layout(window: i64) -> TimeWindows {
        TimeWindows {
            column: "ts".into(),
            window,
            lateness: 0,
        }
    }

    #[test]
    fn calendar_against_known_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        // 2026-11-21 is day 20,778.
        assert_eq!(civil_from_days(20_778), (2026, 11, 21));
        // Every day of 1999..2001 advances the date by exactly one.
        let mut prev = civil_from_days(10_591);
        for z in 10_592..11_323 {
            let cur = civil_from_days(z);
            let next_ok = (cur.0 == prev.0 && cur.1 == prev.1 && cur.2 == prev.2 + 1)
                || (cur.2 == 1 && (cur.1 == prev.1 + 1 || (cur.1 == 1 && prev.1 == 12)));
            assert!(next_ok, "{prev:?} → {cur:?}");
            prev = cur;
        }
    }

    #[test]
    fn labels_sort_like_times_and_name_the_window_start() {
        let day = 20_778 * 86_400;
        assert_eq!(layout(86_400).label(20_778), "2026-11-21");
        assert_eq!(
            layout(3_600).label((day + 6 * 3600) / 3600),
            "2026-11-21T06:00Z"
        );
        assert_eq!(layout(90).label((day + 90) / 90), "2026-11-21T00:01:30Z");
        let l = layout(3_600);
        let labels: Vec<String> = (0..100).map(|i| l.label(day / 3600 + i * 7)).collect();
        let mut sorted = labels.clone();
        sorted.sort();
        assert_eq!(labels, sorted);
    }

    #[test]
    fn indices_floor_every_unit_and_keep_nulls() {
        let l = layout(86_400);
        let day_us = 86_400_000_000i64;
        let a: ArrayRef = Arc::new(
            arrow_array::TimestampMicrosecondArray::from(vec![
                Some(0),
                Some(day_us - 1),
                Some(day_us),
                None,
                Some(-1),
            ])
            .with_timezone("UTC"),
        );
        let mut out = vec![];
        l.indices(&a, &mut out);
        assert_eq!(out, vec![Some(0), Some(0), Some(1), None, Some(-1)]);
        let d: ArrayRef = Arc::new(arrow_array::Date32Array::from(vec![20_778, 20_414]));
        l.indices(&d, &mut out);
        assert_eq!(out, vec![Some(20_778), Some(20_414)]);
        let ns: ArrayRef = Arc::new(arrow_array::TimestampNanosecondArray::from(vec![
            20_778 * 86_400 * 1_000_000_000 + 5,
        ]));
        l.indices(&ns, &mut out);
        assert_eq!(out, vec![Some(20_778)]);
    }

    #[test]
    fn a_window_closes_at_its_end_plus_lateness() {
        let mut l = layout(86_400);
        assert!(!l.closed(1, 2 * 86_400 - 1));
        assert!(l.closed(1, 2 * 86_400));
        l.lateness = 3_600;
        assert!(!l.closed(1, 2 * 86_400));
        assert!(l.closed(1, 2 * 86_400 + 3_600));
    }
}
