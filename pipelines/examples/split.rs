//! A Polars job that splits a Parquet dataset into `clean/` and `quarantine/` with a
//! per-group summary, using the reclag Polars expressions.
//!
//! ```sh
//! # on the bundled sample (trains a model first; no arguments needed):
//! cargo run -p reclag-pipelines --example split
//! # on your data:
//! cargo run -p reclag-pipelines --example split -- MODEL.parquet 'data/*.parquet' OUT_DIR [GROUP_COL]
//! ```
//!
//! One streaming query: the scan and the OOD flag are shared (`cache`) by the two sinks
//! and the summary, and Polars' streaming engine runs them together, so the dataset
//! never has to fit in memory.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use polars::prelude::*;
use reclag_udfs::polars::{is_ood, score};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (model_path, input, out_dir, group) = match args.as_slice() {
        [m, i, o, rest @ ..] => (
            PathBuf::from(m),
            i.clone(),
            PathBuf::from(o),
            rest.first().cloned(),
        ),
        [] => {
            // Kept after the run so the outputs can be looked at.
            let dir = std::env::temp_dir().join("reclag-split-example");
            let (m, i) = sample(&dir)?;
            (m, i, dir.join("out"), Some("label".into()))
        }
        _ => return Err("usage: split [MODEL INPUT OUT_DIR [GROUP_COL]]".into()),
    };
    let model = Arc::new(reclag::format::load(&model_path)?);
    let summary = split(&model, &input, &out_dir, group.as_deref())?;
    println!("{summary}");
    println!(
        "clean rows and quarantined rows are in {}",
        out_dir.display()
    );
    Ok(())
}

/// Writes `<out>/clean/part-0.parquet` (rows the model accepts) and
/// `<out>/quarantine/part-0.parquet` (OOD rows, with their score), and returns the
/// per-group summary.
fn split(
    model: &Arc<reclag::Model>,
    input: &str,
    out: &Path,
    group: Option<&str>,
) -> PolarsResult<DataFrame> {
    let g = || group.map(col);
    let flagged = LazyFrame::scan_parquet(PlRefPath::new(input), ScanArgsParquet::default())?
        .with_columns([
            is_ood(col("embedding"), model, g()).alias("is_ood"),
            score(col("embedding"), model, g()).alias("score"),
        ])
        .cache();
    let clean =
        flagged
            .clone()
            .filter(col("is_ood").not())
            .drop(by_name(["is_ood", "score"], true, false));
    let quarantine = flagged.clone().filter(col("is_ood"));
    let by = match group {
        Some(g) => vec![col(g)],
        None => vec![lit("all").alias("group")],
    };
    let summary = flagged
        .group_by(by.clone())
        .agg([
            len().alias("rows"),
            col("is_ood").sum().alias("ood_rows"),
            col("is_ood").mean().alias("ood_rate"),
            col("score").median().alias("median_score"),
        ])
        .sort_by_exprs(by, SortMultipleOptions::default());
    let opt = summary.get_current_optimizations();
    let plans = vec![
        sink(clean, &out.join("clean"))?.logical_plan,
        sink(quarantine, &out.join("quarantine"))?.logical_plan,
        summary.logical_plan,
    ];
    let mut results = LazyFrame::collect_all_with_engine(plans, Engine::Streaming, opt)?;
    Ok(results.pop().expect("the summary is the last plan"))
}

fn sink(lf: LazyFrame, dir: &Path) -> PolarsResult<LazyFrame> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("part-0.parquet");
    lf.sink(
        SinkDestination::File {
            target: SinkTarget::Path(PlRefPath::new(path.to_string_lossy().as_ref())),
        },
        FileWriteFormat::Parquet(Arc::new(ParquetWriteOptions::default())),
        UnifiedSinkArgs::default(),
    )
}

/// The bundled Fashion-MNIST sample with its MNIST rows mixed in, and a model trained
/// on the sample's ID training rows.
fn sample(dir: &Path) -> Result<(PathBuf, String), Box<dyn std::error::Error>> {
    let files = reclag_pipelines::ops::demo::write_sample(dir)?;
    let model = dir.join("model.parquet");
    let mut out = Vec::new();
    reclag_pipelines::cli::run(
        [
            "reclag",
            "train",
            "--input",
            &files[0].to_string_lossy(),
            "--label",
            "label",
            "--output",
            &model.to_string_lossy(),
            "--epochs",
            "5",
        ],
        &mut out,
    )?;
    // ID test rows plus MNIST digits (OOD, with null labels) in one dataset.
    let mixed = dir.join("incoming");
    std::fs::create_dir_all(&mixed)?;
    for (i, f) in files[1..3].iter().enumerate() {
        std::fs::copy(f, mixed.join(format!("part-{i}.parquet")))?;
    }
    Ok((model, format!("{}/*.parquet", mixed.display())))
}
