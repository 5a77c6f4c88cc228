use std::path::PathBuf;

use reclag::{CalibratedOn, Group, GroupKey, Model, ModelParts, Normalize, Provenance};

/// `../shared` beside the checkout; `None` (with a printed reason) where a user's clone
/// lacks it. CI always has it, and there `RECLAG_REQUIRE_SHARED=1` turns a skip into a
/// failure so a broken path cannot silently pass.
pub fn shared(sub: &str) -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("shared")
        .join(sub);
    if p.exists() {
        Some(p)
    } else {
        if std::env::var("RECLAG_REQUIRE_SHARED").is_ok_and(|v| v == "1") {
            panic!(
                "{} is required (RECLAG_REQUIRE_SHARED=1) but missing",
                p.display()
            );
        }
        eprintln!(
            "SKIP: {} not found (tests that need the shared data are skipped)",
            p.display()
        );
        None
    }
}

pub fn json(sub: &str) -> Option<serde_json::Value> {
    let p = shared(sub)?;
    Some(serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap())
}

pub fn mat(v: &serde_json::Value) -> Vec<Vec<f64>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect()
}

pub fn vecf(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// A model with explicit memories, for golden and property tests.
pub fn model(
    groups: Vec<(Option<GroupKey>, Vec<f64>, usize, f64)>,
    d: usize,
    beta: f64,
    tau_star: f64,
) -> Model {
    Model::new(ModelParts {
        d,
        beta,
        normalize: Normalize::None,
        max_iter: 16,
        tol: 1e-6,
        groups: groups
            .into_iter()
            .map(|(key, xi, m, tau)| Group {
                key,
                xi,
                m,
                tau,
                n_train: 0,
                n_calibration: 0,
                calibrated_on: CalibratedOn::Train,
            })
            .collect(),
        tau_star,
        provenance: Provenance::default(),
        whitening: None,
        beta_search: None,
    })
    .unwrap()
}

/// `|a − b| ≤ tol·max(1, |a|, |b|)`: absolute near zero, relative elsewhere.
#[track_caller]
pub fn near(a: f64, b: f64, tol: f64, what: &str) {
    assert!(
        (a - b).abs() <= tol * 1f64.max(a.abs()).max(b.abs()),
        "{what}: got {a}, expected {b} (tol {tol})"
    );
}

/// `|a − b| ≤ rel·max(|a|,|b|)` (exact equality for zeros and infinities).
#[track_caller]
pub fn close(a: f64, b: f64, rel: f64, what: &str) {
    let ok = a == b || (a - b).abs() <= rel * a.abs().max(b.abs());
    assert!(ok, "{what}: got {a}, expected {b} (rel tol {rel})");
}

use std::path::Path;
use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch};

/// Writes one batch to a Parquet file.
pub fn write_parquet(path: &Path, cols: Vec<(&str, ArrayRef)>) {
    let batch = RecordBatch::try_from_iter(cols).unwrap();
    let f = std::fs::File::create(path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(f, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

/// Writes `batch` to a Parquet file in row groups of at most `rows` rows, so a test
/// crosses row-group (and reader-batch) boundaries on a small table.
pub fn write_row_groups(path: &Path, batch: &RecordBatch, rows: usize) {
    let props = parquet::file::properties::WriterProperties::builder()
        .set_max_row_group_row_count(Some(rows))
        .build();
    let f = std::fs::File::create(path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(f, batch.schema(), Some(props)).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
}

/// A Parquet file's footer.
pub fn metadata(path: &Path) -> Arc<parquet::file::metadata::ParquetMetaData> {
    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(path).unwrap(),
    )
    .unwrap()
    .metadata()
    .clone()
}

/// Copies the Parquet file `src` to `dst` with every column chunk zeroed: the footer
/// and page index still read, so the file lists and opens, and fails only when its
/// pages are read.
pub fn zero_column_chunks(src: &Path, dst: &Path) {
    let mut bytes = std::fs::read(src).unwrap();
    for c in metadata(src)
        .row_groups()
        .iter()
        .flat_map(|rg| rg.columns())
    {
        let (at, len) = c.byte_range();
        bytes[at as usize..(at + len) as usize].fill(0);
    }
    std::fs::write(dst, bytes).unwrap();
}

pub fn read_parquet(path: &Path) -> RecordBatch {
    let f = std::fs::File::open(path).unwrap();
    let r = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .unwrap()
        .build()
        .unwrap();
    let batches: Vec<RecordBatch> = r.map(|b| b.unwrap()).collect();
    let schema = batches.first().map(|b| b.schema()).unwrap_or_else(|| {
        let f = std::fs::File::open(path).unwrap();
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
            .unwrap()
            .schema()
            .clone()
    });
    arrow_select::concat::concat_batches(&schema, &batches).unwrap()
}

/// A `FixedSizeList<Float32, d>` column from rows (a `None` row is null).
pub fn fsl(rows: &[Option<Vec<f32>>], d: i32) -> ArrayRef {
    use arrow_array::builder::{FixedSizeListBuilder, Float32Builder};
    let mut b = FixedSizeListBuilder::new(Float32Builder::new(), d);
    for r in rows {
        match r {
            Some(v) => {
                b.values().append_slice(v);
                b.append(true);
            }
            None => {
                b.values().append_slice(&vec![0.0; d as usize]);
                b.append(false);
            }
        }
    }
    Arc::new(b.finish())
}

/// Runs the `reclag` CLI in-process; returns stdout or the error text.
pub fn cli(args: &[&str]) -> Result<String, String> {
    let mut out = Vec::new();
    let mut full = vec!["reclag"];
    full.extend_from_slice(args);
    match reclag_pipelines::cli::run(full, &mut out) {
        Ok(_) => Ok(String::from_utf8(out).unwrap()),
        Err(e) => Err(e.to_string()),
    }
}

#[track_caller]
pub fn cli_ok(args: &[&str]) -> String {
    cli(args).unwrap_or_else(|e| panic!("reclag {} failed: {e}", args.join(" ")))
}

#[track_caller]
pub fn cli_err(args: &[&str]) -> String {
    match cli(args) {
        Ok(out) => panic!("reclag {} should fail but printed: {out}", args.join(" ")),
        Err(e) => e,
    }
}

/// Gaussian-ish clusters: `k` labels, `n` rows each, dimension `d`, deterministic.
pub fn clusters(k: usize, n: usize, d: usize, seed: u64) -> (Vec<Option<Vec<f32>>>, Vec<i64>) {
    let mut rng = reclag::rng::Rng::new(seed);
    let centers: Vec<Vec<f32>> = (0..k)
        .map(|_| {
            (0..d)
                .map(|_| (rng.next_f64() * 2.0 - 1.0) as f32)
                .collect()
        })
        .collect();
    let mut rows = Vec::new();
    let mut labels = Vec::new();
    for (c, center) in centers.iter().enumerate() {
        for _ in 0..n {
            rows.push(Some(
                center
                    .iter()
                    .map(|v| v + 0.2 * (rng.next_f64() as f32 - 0.5))
                    .collect(),
            ));
            labels.push(c as i64);
        }
    }
    (rows, labels)
}

/// `reclag train --input IN --label label --output OUT --epochs N`, the way the tests
/// make their models; returns the model as loaded from OUT.
#[track_caller]
pub fn train_model(input: &Path, out: &Path, epochs: u32) -> Arc<reclag::Model> {
    cli_ok(&[
        "train",
        "--input",
        &input.display().to_string(),
        "--label",
        "label",
        "--output",
        &out.display().to_string(),
        "--recipe",
        "paper",
        "--epochs",
        &epochs.to_string(),
    ]);
    Arc::new(reclag::format::load(out).unwrap())
}

/// `b` with one more column at the end.
pub fn with_column(b: &RecordBatch, field: arrow_schema::Field, col: ArrayRef) -> RecordBatch {
    set_column(b, b.num_columns(), field, col)
}

/// `b` with column `at` replaced (or, at `b.num_columns()`, one added at the end).
pub fn set_column(
    b: &RecordBatch,
    at: usize,
    field: arrow_schema::Field,
    col: ArrayRef,
) -> RecordBatch {
    let mut fields: Vec<arrow_schema::Field> = b
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    let mut cols = b.columns().to_vec();
    if at == cols.len() {
        fields.push(field);
        cols.push(col);
    } else {
        fields[at] = field;
        cols[at] = col;
    }
    RecordBatch::try_new(Arc::new(arrow_schema::Schema::new(fields)), cols).unwrap()
}
