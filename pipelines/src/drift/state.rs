//! What a run leaves behind about itself: the state file (which partitions are done),
//! each partition's record, and the run's summary.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::*;
use crate::error::{Error, Result};

/// What became of a partition; written `"done"` or `"skipped"` in the state file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PartitionStatus {
    /// Scored, tested and published.
    Done,
    /// Left out, with the reason (a missing column, an unreadable file, ...).
    Skipped,
}

/// What a partition contributed, as recorded in the state file and the summary.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PartitionRecord {
    pub partition: String,
    pub status: PartitionStatus,
    /// Why a partition was skipped (shown in the report).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default)]
    pub rows: u64,
    #[serde(default)]
    pub ood_rows: u64,
    #[serde(default)]
    pub ood_rate: f64,
    #[serde(default)]
    pub expected_rate: f64,
    #[serde(default)]
    pub p_value: f64,
    #[serde(default)]
    pub drift: bool,
    /// Groups whose own test alerted.
    #[serde(default)]
    pub drift_groups: Vec<String>,
    /// Score quantiles at 0.5 % steps, for the report's histogram.
    #[serde(default)]
    pub score_quantiles: Vec<f64>,
    /// Share of scored rows whose conformal p-value is below `alert.p_level` (the
    /// model has calibration scores).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_p_rate: Option<f64>,
    /// Rows per p-value bin of width 1/[`P_BINS`], for the report's histogram.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub p_histogram: Vec<u64>,
    #[serde(default)]
    pub groups: Vec<GroupRecord>,
    /// The most OOD rows, their scalar columns as text, for the report's table.
    #[serde(default)]
    pub worst: Vec<WorstRow>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupRecord {
    pub group: String,
    pub rows: u64,
    pub ood_rows: u64,
    pub ood_rate: f64,
    pub p_value: f64,
    pub drift: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_p_rate: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorstRow {
    pub score: f64,
    pub columns: Vec<(String, String)>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    pub model_sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<ReferenceRecord>,
    pub partitions: BTreeMap<String, PartitionRecord>,
}

/// The reference data's OOD rates, measured once and kept with the state so every
/// partition is judged against the same numbers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReferenceRecord {
    pub url: String,
    pub rows: u64,
    /// Counts, not rates, so a rerun that reads the state back judges with exactly
    /// the same numbers.
    pub ood_rows: u64,
    /// Group → (rows, OOD rows).
    pub groups: BTreeMap<String, (u64, u64)>,
    pub score_quantiles: Vec<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_p_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub p_histogram: Vec<u64>,
}

impl ReferenceRecord {
    pub fn ood_rate(&self) -> f64 {
        self.ood_rows as f64 / self.rows.max(1) as f64
    }
}

/// The compact form of a partition in the stdout summary.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PartitionBrief {
    pub partition: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub rows: u64,
    pub ood_rows: u64,
    pub ood_rate: f64,
    pub expected_rate: f64,
    pub p_value: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub low_p_rate: Option<f64>,
    pub drift_groups: Vec<String>,
}

impl From<&PartitionRecord> for PartitionBrief {
    fn from(r: &PartitionRecord) -> Self {
        PartitionBrief {
            partition: r.partition.clone(),
            reason: r.reason.clone(),
            rows: r.rows,
            ood_rows: r.ood_rows,
            ood_rate: r.ood_rate,
            expected_rate: r.expected_rate,
            p_value: r.p_value,
            low_p_rate: r.low_p_rate,
            drift_groups: r.drift_groups.clone(),
        }
    }
}

/// The one-line JSON a run prints.
#[derive(Clone, Debug, Serialize)]
pub struct DriftSummary {
    pub started_at_unix: u64,
    pub source: String,
    pub output: String,
    pub model_sha256: String,
    pub dry_run: bool,
    /// Partitions this run would process (dry run) or processed (skipped ones included).
    pub partitions: Vec<String>,
    pub skipped: Vec<PartitionBrief>,
    pub drifted: Vec<PartitionBrief>,
    pub already_done: usize,
    /// What the OOD rates were judged against: `alert.expected_rate`, the reference,
    /// or the model's calibration level (and why that may not fit the data).
    pub baseline: String,
    /// Time windows with rows that are still open (end + lateness after now); a later
    /// run processes them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<String>,
    pub drift: bool,
    /// Set when the run stopped early at a shutdown request (between partitions).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
    /// What happened to the webhook POST, when one is configured and due.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
}

impl DriftSummary {
    pub fn json_line(&self) -> String {
        serde_json::to_string(self).expect("the summary serializes")
    }
}

impl DriftJob {
    pub(super) fn load_state(&self) -> Result<State> {
        let loc = self.out(STATE_FILE)?;
        match loc.head()? {
            None => Ok(State {
                version: 1,
                ..Default::default()
            }),
            Some(_) => {
                let bytes = loc.get()?;
                serde_json::from_slice(&bytes).map_err(|e| {
                    Error::Usage(format!(
                        "{}: not a reclag drift state file ({e}); point output.url at a new location or delete the file to start over",
                        loc.display
                    ))
                })
            }
        }
    }

    pub(super) fn save_state(&self, state: &State) -> Result<()> {
        let mut text = serde_json::to_string_pretty(state).expect("the state serializes");
        text.push('\n');
        self.out(STATE_FILE)?.put(Bytes::from(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The status is written as the words state files have always held, and read back.
    #[test]
    fn partition_status_keeps_its_words_in_the_state_file() {
        for (status, word) in [
            (PartitionStatus::Done, "\"done\""),
            (PartitionStatus::Skipped, "\"skipped\""),
        ] {
            assert_eq!(serde_json::to_string(&status).unwrap(), word);
            assert_eq!(
                serde_json::from_str::<PartitionStatus>(word).unwrap(),
                status
            );
        }
        assert!(serde_json::from_str::<PartitionStatus>("\"Done\"").is_err());
    }
}
