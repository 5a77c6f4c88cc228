//! `reclag drift run` and `reclag drift watch`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;

use crate::error::Result;
use crate::store::Stores;

use super::*;

#[derive(Args, Debug)]
pub struct DriftWatchArgs {
    /// The job spec (TOML); see `reclag drift run --help`.
    pub job: PathBuf,
    /// How often: 30s, 15m, 6h, 24h, 1d, 1h30m.
    #[arg(long, default_value = "24h", value_name = "DURATION")]
    pub every: String,
}

#[derive(Args, Debug)]
#[command(after_long_help = "\
The job spec (TOML; examples in pipelines/jobs/):

  [source]
  url = \"s3://lake/events\"        # or a local path
  partitioning = \"hive:date\"      # directories date=YYYY-MM-DD, or:
  # partitioning = \"time:event_time\" # a timestamp column cut into UTC windows
  # window = \"1d\"                   #   of this length (6h, 30m, ...), processed
  # lateness = \"2h\"                 #   once closed (end + lateness ≤ now)
  embedding = \"embedding\"
  group = \"label\"                 # optional: per-group rates and routing
  # route = \"union\"               # without group: best margin (default) or union
  [model]
  url = \"models/prod.parquet\"
  [output]
  url = \"drift-out/\"              # metrics/, worst/, report.html, _state.json
  [alert]
  alpha = 0.01                     # level of the one-sided test of the OOD rate
  min_rows = 100
  # max_rate = 0.2                 # also alert above this absolute OOD rate
  # expected_rate = 0.05           # default: the reference's rate, else the model's
  #                                #   calibration ood_rate
  # p_level = 0.05                 # metrics count rows with conformal p-value below it
  [report]
  top_k = 20                       # worst rows kept per partition
  # [reference]                    # the baseline the expected rate comes from:
  # partitions = [\"2026-11-01\", \"2026-11-02\"] # clean partitions of the source, or
  # from = \"2026-11-01\"              #   a period of them (to is required),
  # to = \"2026-11-07\"
  # url = \"s3://lake/validation/\"   #   or ID data elsewhere
  # Reference partitions are the baseline, never judged. Without a reference the
  # expected rate is the model's calibration level, which fresh ID data can exceed
  # (embeddings from a network trained on the model's table make its held-out rows
  # look more in-distribution): clean days may then alert. The summary's `baseline`
  # and the report say which was used.

Outputs are committed per partition; a killed run rerun gives the same bytes, and
partitions already processed are skipped. Query the metrics with
  reclag sql --table m=drift-out/metrics/ \"SELECT * FROM m WHERE drift\"
Prints one JSON line: the partitions processed, skipped (and why) and drifted.")]
pub struct DriftRunArgs {
    /// The job spec (TOML).
    pub job: PathBuf,
    /// Process only this partition value (e.g. 2026-11-21), if not done yet.
    #[arg(long, conflicts_with = "since", value_name = "P")]
    pub partition: Option<String>,
    /// Process partitions with values ≥ P (in sort order) that are not done yet.
    #[arg(long, value_name = "P")]
    pub since: Option<String>,
    /// Check the spec, the model and the lake, and list what would be processed.
    #[arg(long)]
    pub dry_run: bool,
    /// Fail the run (exit 1) at the first partition that would be skipped: no
    /// Parquet files, a missing column, a dimension mismatch, or a file that cannot be
    /// read (not Parquet, corrupt, a column of another type). Without it such a
    /// partition is recorded as skipped with the reason (summary and report) and the
    /// run goes on.
    #[arg(long)]
    pub strict: bool,
    /// One run per output at a time: a run holds `_lock` in the output location while
    /// it runs. Another run waits this long for it (30s, 10m, 2h), then exits naming
    /// the holder; 0s exits at once.
    #[arg(long, default_value = "10m", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub lock_wait: std::time::Duration,
    /// On an object store, a run keeps its `_lock` object fresh with a heartbeat
    /// (every quarter of this); a lock unchanged this long belongs to a run that was
    /// killed, and a waiting run takes it over. Keep it well below --lock-wait.
    #[arg(long, default_value = "2m", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub lock_stale_after: std::time::Duration,
}

pub(super) fn run(a: DriftRunArgs, stores: Arc<Stores>, out: &mut dyn Write) -> Result<ExitCode> {
    let spec = crate::drift::DriftSpec::from_file(&a.job)?;
    let select = match (a.partition, a.since) {
        (Some(p), _) => crate::drift::Select::Only(p),
        (None, Some(p)) => crate::drift::Select::Since(p),
        (None, None) => crate::drift::Select::All,
    };
    let summary = crate::drift::DriftJob::new(spec, stores)
        .select(select)
        .dry_run(a.dry_run)
        .strict(a.strict)
        .lock_stale_after(a.lock_stale_after)
        .lock_wait(a.lock_wait)
        .run()?;
    writeln!(out, "{}", summary.json_line()).map_err(io_err)?;
    if summary.drift {
        return Ok(ExitCode::from(crate::drift::EXIT_DRIFT));
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn watch(
    a: DriftWatchArgs,
    stores: Arc<Stores>,
    out: &mut dyn Write,
) -> Result<ExitCode> {
    let spec = crate::drift::DriftSpec::from_file(&a.job)?;
    let every = crate::drift::watch::parse_every(&a.every)?;
    let job = crate::drift::DriftJob::new(spec, stores);
    let rt = runtime("starting the scheduler")?;
    rt.block_on(crate::drift::watch::watch(
        job,
        every,
        terminated(),
        |r| match r {
            Ok(s) => {
                let _ = writeln!(out, "{}", s.json_line());
                let _ = out.flush();
            }
            Err(e) => eprintln!("error: {e} (watching on; next run in {})", a.every),
        },
    ));
    Ok(ExitCode::SUCCESS)
}
