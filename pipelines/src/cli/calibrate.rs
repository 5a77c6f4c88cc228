//! `reclag calibrate`: new thresholds and calibration scores from fresh ID rows.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;

use crate::error::Result;
use crate::ops::calibrate::CalibrateJob;
use crate::store::Stores;

use super::*;

#[derive(Args, Debug)]
#[command(after_long_help = "\
Spec §11's re-thresholding. Every τ_g (and τ*) becomes the --ood-rate quantile of the
new rows' energies in group g, and the calibration scores behind reclag_p_value are
replaced by theirs; memories, β and preprocessing are kept, so it takes seconds where
training takes minutes. The new model records the source model's checksum.

When to use it: the rows a model was calibrated on (held out of its training table)
are not the rows it meets. Embeddings from a network trained on the same table make
held-out training rows look more in-distribution than fresh rows, so fresh ID data is
flagged above the nominal rate and its p-values are too small. Calibrating on a sample
of fresh ID rows (a clean day, a validation set) restores both.

Rows are routed by their label (--label, default: the column the model was trained
with); rows with a null label or a null or non-finite embedding are skipped and
counted. Each group needs at least 1/ood-rate rows.

Examples:
  reclag calibrate --model prod.parquet --input validation.parquet --output prod-v2.parquet
  reclag calibrate --model prod.parquet --input 'lake/date=2026-11-2*/*.parquet' \\
      --ood-rate 0.01 --output prod-1pct.parquet")]
pub struct CalibrateArgs {
    /// The model file: a path or URL.
    #[arg(long, value_name = "MODEL")]
    pub model: String,
    /// New ID rows: Parquet file(s), directories, prefixes or globs; paths or URLs.
    #[arg(long, required = true, num_args = 1.., value_name = "URL")]
    pub input: Vec<String>,
    /// Where to write the new model (a path or URL).
    #[arg(long, value_name = "MODEL")]
    pub output: String,
    /// Share of ID rows to flag: each τ is this quantile of the new rows' energies.
    /// Default: the model's current level.
    #[arg(long, value_name = "R")]
    pub ood_rate: Option<f64>,
    /// The label column routing rows to groups. Default: the column the model was
    /// trained with (models from older releases do not record it).
    #[arg(long, value_name = "COL")]
    pub label: Option<String>,
    /// Embedding column.
    #[arg(long, default_value = "embedding", value_name = "COL")]
    pub embedding: String,
}

impl From<(CalibrateArgs, Arc<Stores>)> for CalibrateJob {
    fn from((a, stores): (CalibrateArgs, Arc<Stores>)) -> Self {
        CalibrateJob::new(stores, a.input, a.model, a.output)
            .embedding(a.embedding)
            .label(a.label)
            .ood_rate(a.ood_rate)
    }
}

pub(super) fn run(a: CalibrateArgs, stores: Arc<Stores>, out: &mut dyn Write) -> Result<ExitCode> {
    let model = crate::store::load_model(&stores, &a.model)?;
    let output = a.output.clone();
    let (_, s) = CalibrateJob::from((a, stores)).run(&model)?;
    writeln!(
        out,
        "recalibrated {} group(s) on {} rows at ood-rate {} (label {}; skipped {} with a null label, {} with a null or non-finite embedding); wrote {}",
        s.groups.len(),
        s.rows,
        s.ood_rate,
        s.label.as_deref().unwrap_or("-"),
        s.skipped_null_label,
        s.skipped_invalid,
        output
    )
    .map_err(io_err)?;
    writeln!(
        out,
        "{:<12} {:>8} {:>12} {:>12} {:>22}",
        "group", "rows", "tau before", "tau after", "flagged at old tau"
    )
    .map_err(io_err)?;
    for g in &s.groups {
        writeln!(
            out,
            "{:<12} {:>8} {:>12.6} {:>12.6} {:>21.1}%",
            g.group,
            g.rows,
            g.tau_before,
            g.tau_after,
            100.0 * g.flagged_before
        )
        .map_err(io_err)?;
    }
    Ok(ExitCode::SUCCESS)
}
