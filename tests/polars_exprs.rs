//! Polars expressions end to end: equal to the SQL functions row for row on
//! image_fmnist, lazy schemas, the streaming engine, `reclag filter`, and bad input.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::ArrayRef;
use arrow_array::builder::{Float32Builder, ListBuilder};
use datafusion::execution::context::SessionContext;
use datafusion::prelude::{ParquetReadOptions, SessionConfig};
use polars::prelude::*;
use reclag_udfs::polars as rp;

use crate::common::{cli_err, cli_ok, fsl, shared, train_model, write_parquet};

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn scan(p: &Path) -> LazyFrame {
    LazyFrame::scan_parquet(PlRefPath::new(s(p).as_str()), ScanArgsParquet::default()).unwrap()
}

fn train(input: &Path, out: &Path) -> Arc<reclag::Model> {
    train_model(input, out, 5)
}

type Exprs = fn(Expr, &Arc<reclag::Model>, Option<Expr>) -> Expr;
const ALL: [(&str, Exprs); 7] = [
    ("reclag_score", rp::score),
    ("reclag_energy", rp::energy),
    ("reclag_ood_probability", rp::ood_probability),
    ("reclag_is_ood", rp::is_ood),
    ("reclag_attractor", rp::attractor),
    ("reclag_explain", rp::explain),
    ("reclag_p_value", rp::p_value),
];

/// The SQL functions' results on `table`, each turned into a Polars Series by the same
/// bridge the expressions use for their outputs.
async fn sql_columns(table: &Path, model: &Arc<reclag::Model>, group: bool) -> Vec<Series> {
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
    let reg = reclag_udfs::ModelRegistry::new();
    reg.register("m", model.clone());
    reclag_udfs::register_all(&ctx, reg);
    ctx.register_parquet("t", s(table).as_str(), ParquetReadOptions::default())
        .await
        .unwrap();
    let g = if group { ", label" } else { "" };
    let cols: Vec<String> = ALL
        .iter()
        .map(|(f, _)| format!("{f}('m', embedding{g}) AS {f}"))
        .collect();
    let batches = ctx
        .sql(&format!("SELECT {} FROM t", cols.join(", ")))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let batch = arrow_select::concat::concat_batches(&batches[0].schema(), &batches).unwrap();
    ALL.iter()
        .enumerate()
        .map(|(k, (f, _))| {
            let chunk = rp::bridge::to_polars(batch.column(k)).unwrap();
            Series::try_from((PlSmallStr::from(*f), vec![chunk])).unwrap()
        })
        .collect()
}

fn polars_columns(lf: LazyFrame, model: &Arc<reclag::Model>, group: bool) -> DataFrame {
    let exprs: Vec<Expr> = ALL
        .iter()
        .map(|(_, f)| f(col("embedding"), model, group.then(|| col("label"))))
        .collect();
    lf.select(exprs).collect().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polars_equals_sql_row_for_row_on_image_fmnist() {
    let Some(dir) = shared("data/image_fmnist") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let model = train(&dir.join("id_train.parquet"), &tmp.path().join("m.parquet"));
    // ID rows route by label; the OOD rows' labels are null, so they score against the
    // union row by row even in group mode.
    for file in ["id_test.parquet", "ood_mnist.parquet"] {
        let table = dir.join(file);
        for group in [true, false] {
            let want = sql_columns(&table, &model, group).await;
            // Array(Float32, 128) as stored, and the same rows as List(Float32).
            let array = scan(&table);
            let list = scan(&table)
                .with_column(col("embedding").cast(DataType::List(Box::new(DataType::Float32))));
            for (layout, lf) in [("Array", array), ("List", list)] {
                let got = polars_columns(lf, &model, group);
                assert!(got.height() >= 1000, "{file}: {} rows", got.height());
                for w in &want {
                    let g = got.column(w.name()).unwrap().as_materialized_series();
                    assert_eq!(g.dtype(), w.dtype(), "{} dtype", w.name());
                    assert!(
                        g.equals_missing(w),
                        "{} differs: {file}, group {group}, {layout}",
                        w.name()
                    );
                }
                let ood = got.column("reclag_is_ood").unwrap().bool().unwrap().sum();
                assert!(ood.is_some_and(|n| n > 0), "{file}: some rows flagged");
            }
        }
    }
}

/// A 3-d model with two memories and a small Parquet file of known rows: ID, OOD,
/// null, NaN.
fn toy(dir: &Path) -> (Arc<reclag::Model>, PathBuf) {
    let (rows, labels) = crate::common::clusters(2, 60, 3, 7);
    let train_path = dir.join("toy-train.parquet");
    write_parquet(
        &train_path,
        vec![
            ("embedding", fsl(&rows, 3)),
            ("label", Arc::new(arrow_array::Int64Array::from(labels))),
        ],
    );
    let model = train(&train_path, &dir.join("toy-model.parquet"));
    let rows = vec![
        rows[0].clone(),
        Some(vec![0.0, 0.0, 0.0]),
        None,
        Some(vec![f32::NAN, 0.0, 0.0]),
    ];
    let table = dir.join("toy.parquet");
    write_parquet(
        &table,
        vec![
            ("embedding", fsl(&rows, 3)),
            (
                "label",
                Arc::new(arrow_array::Int64Array::from(vec![
                    Some(0),
                    None,
                    Some(1),
                    Some(0),
                ])),
            ),
            (
                "id",
                Arc::new(arrow_array::Int32Array::from(vec![0, 1, 2, 3])),
            ),
        ],
    );
    (model, table)
}

#[test]
fn polars_bad_input_and_lazy_schemas() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, table) = toy(tmp.path());

    // Output types resolve before anything runs.
    let schema = scan(&table)
        .select(
            ALL.iter()
                .map(|(_, f)| f(col("embedding"), &model, Some(col("label"))))
                .collect::<Vec<_>>(),
        )
        .collect_schema()
        .unwrap();
    let types: Vec<_> = schema
        .iter()
        .map(|(n, t)| (n.to_string(), t.clone()))
        .collect();
    assert_eq!(types[0], ("reclag_score".into(), DataType::Float64));
    assert_eq!(types[3], ("reclag_is_ood".into(), DataType::Boolean));
    assert_eq!(types[4], ("reclag_attractor".into(), DataType::Int32));
    assert!(matches!(types[5].1, DataType::Struct(_)), "{:?}", types[5]);
    assert_eq!(types[6], ("reclag_p_value".into(), DataType::Float64));
    // A model without calibration scores has no p-values: the lazy schema says so.
    let v2 = Arc::new(
        reclag::format::load(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/model_v2.parquet"),
        )
        .unwrap(),
    );
    let e = scan(&Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/demo/id_test.parquet"))
        .select([rp::p_value(col("embedding"), &v2, None)])
        .collect_schema()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("reclag_p_value: the model has no calibration scores"),
        "{e}"
    );

    // Nulls and NaN give null outputs; the ID row is ID, the zero vector OOD.
    let df = scan(&table)
        .select([
            col("id"),
            rp::is_ood(col("embedding"), &model, Some(col("label"))),
            rp::score(col("embedding"), &model, None),
            rp::explain(col("embedding"), &model, Some(col("label")))
                .struct_()
                .field_by_name("margin")
                .alias("margin"),
        ])
        .collect()
        .unwrap();
    let ood: Vec<Option<bool>> = df
        .column("reclag_is_ood")
        .unwrap()
        .bool()
        .unwrap()
        .iter()
        .collect();
    assert_eq!(ood, vec![Some(false), Some(true), None, None]);
    let score: Vec<Option<f64>> = df
        .column("reclag_score")
        .unwrap()
        .f64()
        .unwrap()
        .iter()
        .collect();
    assert!(score[0].unwrap() > 0.0 && score[1].unwrap() <= 0.0);
    assert_eq!((score[2], score[3]), (None, None));
    let margin: Vec<Option<f64>> = df.column("margin").unwrap().f64().unwrap().iter().collect();
    assert_eq!(
        (margin[2], margin[3]),
        (None, None),
        "struct fields null with the row"
    );

    // A wrong Array width fails when the schema resolves, naming column and widths.
    let wide = tmp.path().join("wide.parquet");
    write_parquet(&wide, vec![("embedding", fsl(&[Some(vec![1.0; 5])], 5))]);
    let e = scan(&wide)
        .select([rp::score(col("embedding"), &model, None)])
        .collect_schema()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("reclag_score: column 'embedding': expected embedding dimension 3, found 5"),
        "{e}"
    );

    // A float group column is refused with the SQL message.
    let e = scan(&table)
        .select([rp::is_ood(
            col("embedding"),
            &model,
            Some(col("label").cast(DataType::Float64)),
        )])
        .collect_schema()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("group argument 'label' has type Float64; expected an integer or string type"),
        "{e}"
    );

    // A ragged List fails at execution, naming the column and the row.
    let mut b = ListBuilder::new(Float32Builder::new());
    for len in [3, 2] {
        b.values().append_slice(&vec![0.5; len]);
        b.append(true);
    }
    let ragged = tmp.path().join("ragged.parquet");
    write_parquet(
        &ragged,
        vec![("embedding", Arc::new(b.finish()) as ArrayRef)],
    );
    let e = scan(&ragged)
        .select([rp::score(col("embedding"), &model, None)])
        .collect()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(
            "reclag_score: column 'embedding': expected embedding dimension 3, found 2 at row 1"
        ),
        "{e}"
    );

    // An empty frame gives empty, typed outputs.
    let empty = scan(&table)
        .filter(col("id").gt(lit(100)))
        .select([
            rp::score(col("embedding"), &model, Some(col("label"))),
            rp::explain(col("embedding"), &model, None),
        ])
        .collect()
        .unwrap();
    assert_eq!(empty.height(), 0);
    assert_eq!(
        empty.column("reclag_score").unwrap().dtype(),
        &DataType::Float64
    );
    assert!(matches!(
        empty.column("reclag_explain").unwrap().dtype(),
        DataType::Struct(_)
    ));
}

#[test]
fn streaming_sink_over_many_row_groups_equals_in_memory() {
    let Some(dir) = shared("data/image_fmnist") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let model = train(&dir.join("id_train.parquet"), &tmp.path().join("m.parquet"));
    // ID test rows and MNIST rows in one file of 25 row groups.
    let mixed = tmp.path().join("mixed.parquet");
    let mut frame = concat(
        [
            scan(&dir.join("id_test.parquet")),
            scan(&dir.join("ood_mnist.parquet")),
        ],
        UnionArgs::default(),
    )
    .unwrap()
    .collect()
    .unwrap();
    let mut f = std::fs::File::create(&mixed).unwrap();
    ParquetWriter::new(&mut f)
        .with_row_group_size(Some(1000))
        .finish(&mut frame)
        .unwrap();
    let groups = crate::common::metadata(&mixed).num_row_groups();
    assert!(groups >= 10, "{groups} row groups");

    let keep = || {
        reclag_pipelines::ops::filter::keep_predicate(
            &model,
            "embedding",
            Some("label"),
            reclag::Route::Best,
            reclag_pipelines::ops::filter::Keep::Id,
        )
    };
    let in_memory = scan(&mixed).filter(keep()).collect().unwrap();
    let sunk = tmp.path().join("clean.parquet");
    reclag_pipelines::ops::filter::sink_parquet(scan(&mixed).filter(keep()), &sunk).unwrap();
    let streamed = scan(&sunk).collect().unwrap();
    assert!(in_memory.height() > 5000 && in_memory.height() < frame.height());
    assert!(
        streamed.equals_missing(&in_memory),
        "streamed sink equals the in-memory result"
    );

    // `reclag filter` is the same path: ID rows plus OOD rows add up to the input.
    let ood_out = tmp.path().join("quarantine.parquet");
    let id_out = tmp.path().join("id.parquet");
    for (keep, out) in [("id", &id_out), ("ood", &ood_out)] {
        let msg = cli_ok(&[
            "filter",
            "--model",
            &s(&tmp.path().join("m.parquet")),
            "--input",
            &s(&mixed),
            "--group",
            "label",
            "--keep",
            keep,
            "--output",
            &s(out),
        ]);
        assert!(
            msg.contains(&format!("of {} rows", frame.height())),
            "{msg}"
        );
    }
    let id_rows = scan(&id_out).collect().unwrap();
    let ood_rows = scan(&ood_out).collect().unwrap();
    assert!(id_rows.equals_missing(&in_memory));
    assert_eq!(
        id_rows.height() + ood_rows.height(),
        frame.height(),
        "no null embeddings here"
    );
    assert_eq!(
        id_rows.get_column_names(),
        frame.get_column_names(),
        "every column kept"
    );
    // No temporary file is left beside the outputs.
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn reclag_filter_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, table) = toy(tmp.path());
    let model = s(&tmp.path().join("toy-model.parquet"));
    let out = s(&tmp.path().join("out.parquet"));
    let input = s(&table);
    // `reclag filter --model M --input T` plus `rest`.
    let args = |rest: &[&str]| -> Vec<String> {
        ["filter", "--model", &model, "--input", &input]
            .iter()
            .chain(rest)
            .map(|a| a.to_string())
            .collect()
    };
    let err = |rest: &[&str]| {
        let a = args(rest);
        cli_err(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let e = err(&["--keep", "id", "--output", &out, "--embedding", "emb"]);
    assert!(
        e.contains("no embedding column 'emb'") && e.contains("toy.parquet"),
        "{e}"
    );
    let e = err(&["--keep", "id", "--output", &out, "--group", "cls"]);
    assert!(e.contains("no group column 'cls'"), "{e}");
    let e = err(&["--keep", "maybe", "--output", &out]);
    assert!(
        e.contains("maybe") && e.contains("id") && e.contains("ood"),
        "{e}"
    );
    let e = err(&["--keep", "id", "--output", "s3://b/x.parquet"]);
    assert!(e.contains("writes local Parquet"), "{e}");
    assert!(!Path::new(&out).exists(), "nothing written on error");
    // The toy table has a null and a NaN embedding: kept on neither side.
    let a = args(&["--keep", "id", "--output", &out, "--group", "label"]);
    let msg = cli_ok(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(msg.contains("kept 1 of 4 rows"), "{msg}");
    // A file that fails mid-run (its column chunks zeroed, footer intact): an error
    // naming it, and no output, partial or temporary.
    let spoiled = tmp.path().join("spoiled.parquet");
    crate::common::zero_column_chunks(&table, &spoiled);
    let never = s(&tmp.path().join("never.parquet"));
    let e = cli_err(&[
        "filter",
        "--model",
        &model,
        "--input",
        &input,
        &s(&spoiled),
        "--keep",
        "id",
        "--output",
        &never,
    ]);
    assert!(e.contains("spoiled.parquet"), "{e}");
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("never.parquet"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // A file with no rows gives an output with no rows and every column.
    let empty = tmp.path().join("empty.parquet");
    let none: Vec<Option<Vec<f32>>> = vec![];
    write_parquet(
        &empty,
        vec![
            ("embedding", fsl(&none, 3)),
            (
                "label",
                Arc::new(arrow_array::Int64Array::from(Vec::<i64>::new())),
            ),
        ],
    );
    let msg = cli_ok(&[
        "filter",
        "--model",
        &model,
        "--input",
        &s(&empty),
        "--keep",
        "ood",
        "--output",
        &out,
        "--group",
        "label",
    ]);
    assert!(msg.contains("kept 0 of 0 rows"), "{msg}");
    let written = scan(Path::new(&out)).collect().unwrap();
    assert_eq!(written.height(), 0);
    assert_eq!(written.get_column_names(), ["embedding", "label"]);
}

/// `Frames` is Polars' `scan_parquet` over reclag's reader: over a glob of two files,
/// the second with its columns in another order, the frames stacked are the frames
/// Polars reads (types, nulls, strings, the embedding), cut at the reader's batches.
/// A file with one more column is refused naming it; a file whose pages are zeroed
/// ends the frames with an error naming it.
#[test]
fn frames_are_polars_scans_through_reclags_reader() {
    use arrow_array::{Float64Array, Int64Array, StringArray};
    use reclag_pipelines::ops::frames::Frames;
    use reclag_pipelines::store::Stores;
    let tmp = tempfile::tempdir().unwrap();
    let (mut rows, labels) = crate::common::clusters(3, 9_000, 8, 11);
    rows[17] = None;
    let n = rows.len();
    let write = |path: &Path, cols: Vec<(&str, ArrayRef)>| {
        let batch = arrow_array::RecordBatch::try_from_iter(cols).unwrap();
        crate::common::write_row_groups(path, &batch, 5_000);
    };
    let names: StringArray = (0..n)
        .map(|i| (i % 5 != 0).then(|| format!("row-{i}")))
        .collect();
    let (a, b) = (tmp.path().join("a.parquet"), tmp.path().join("b.parquet"));
    write(
        &a,
        vec![
            ("id", Arc::new(Int64Array::from_iter_values(0..n as i64))),
            ("label", Arc::new(Int64Array::from(labels.clone()))),
            ("name", Arc::new(names.clone())),
            ("embedding", fsl(&rows, 8)),
        ],
    );
    let m = 7_000;
    write(
        &b,
        vec![
            ("embedding", fsl(&rows[..m], 8)),
            ("name", Arc::new(names.slice(0, m))),
            ("label", Arc::new(Int64Array::from(labels[..m].to_vec()))),
            ("id", Arc::new(Int64Array::from_iter_values(0..m as i64))),
        ],
    );
    let stores = Stores::default();
    // A file with a column the others lack is refused, not silently narrowed.
    let c = tmp.path().join("c").join("c.parquet");
    std::fs::create_dir(c.parent().unwrap()).unwrap();
    std::fs::copy(&a, tmp.path().join("c").join("a.parquet")).unwrap();
    write(
        &c,
        vec![
            ("id", Arc::new(Int64Array::from_iter_values(0..m as i64))),
            ("label", Arc::new(Int64Array::from(labels[..m].to_vec()))),
            ("name", Arc::new(names.slice(0, m))),
            ("embedding", fsl(&rows[..m], 8)),
            ("extra", Arc::new(Float64Array::from(vec![0.5; m]))),
        ],
    );
    let err = Frames::open(&stores, &[s(c.parent().unwrap())])
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("c.parquet: column(s) 'extra' are not in"),
        "{err}"
    );
    let frames = Frames::open(&stores, &[s(&tmp.path().join("*.parquet"))]).unwrap();
    assert_eq!(frames.rows(), (n + m) as u64);
    let empty = frames.empty().unwrap();
    let mut got = empty.clone();
    let mut count = 0;
    for frame in frames {
        got.vstack_mut_owned(frame.unwrap()).unwrap();
        count += 1;
    }
    assert!(count >= 3, "{count} frames");
    let columns = ["id", "label", "name", "embedding"];
    let want = concat(
        [scan(&a), scan(&b).select(columns.map(col))],
        UnionArgs::default(),
    )
    .unwrap()
    .collect()
    .unwrap();
    assert_eq!(
        got.schema(),
        want.schema(),
        "the frames' types are Polars' own"
    );
    assert_eq!(empty.schema(), want.schema());
    assert!(
        got.equals_missing(&want),
        "the frames hold the rows Polars reads"
    );
    assert_eq!(
        got.column("embedding").unwrap().null_count(),
        2,
        "the null embedding, in each file"
    );

    // Zeroed pages in a later file: the good file's frames, then its name in an error.
    let bad = tmp.path().join("c.parquet");
    let mut bytes = std::fs::read(&b).unwrap();
    let len = bytes.len();
    let footer = u32::from_le_bytes(bytes[len - 8..len - 4].try_into().unwrap()) as usize;
    bytes[4..len - 8 - footer].fill(0);
    std::fs::write(&bad, bytes).unwrap();
    let mut rows_before = 0;
    let mut frames = Frames::open(&stores, &[s(&a), s(&bad)]).unwrap();
    let err = loop {
        match frames.next().expect("an error before the end") {
            Ok(f) => rows_before += f.height(),
            Err(e) => break e.to_string(),
        }
    };
    assert!(err.contains("c.parquet"), "{err}");
    assert_eq!(rows_before, n, "every row of the good file came first");
    assert!(frames.next().is_none(), "nothing after the error");
}

/// `reclag filter` encodes row groups in parallel and writes them in order: over
/// 180k rows (three output row groups, two encoded at a time), the output is the
/// in-memory Polars filter row for row.
#[test]
fn reclag_filter_writes_parallel_row_groups_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let (train_rows, train_labels) = crate::common::clusters(3, 300, 4, 5);
    let train_path = tmp.path().join("train.parquet");
    write_parquet(
        &train_path,
        vec![
            ("embedding", fsl(&train_rows, 4)),
            (
                "label",
                Arc::new(arrow_array::Int64Array::from(train_labels)),
            ),
        ],
    );
    let model = train(&train_path, &tmp.path().join("m.parquet"));
    // The same centres (same seed), more rows, and every 7th row far away.
    let (mut rows, labels) = crate::common::clusters(3, 60_000, 4, 5);
    for r in rows.iter_mut().step_by(7) {
        *r = Some(vec![30.0, -30.0, 30.0, -30.0]);
    }
    let n = rows.len();
    let input = tmp.path().join("in.parquet");
    write_parquet(
        &input,
        vec![
            (
                "id",
                Arc::new(arrow_array::Int64Array::from_iter_values(0..n as i64)),
            ),
            ("embedding", fsl(&rows, 4)),
            ("label", Arc::new(arrow_array::Int64Array::from(labels))),
        ],
    );
    let out = tmp.path().join("clean.parquet");
    let msg = cli_ok(&[
        "filter",
        "--model",
        &s(&tmp.path().join("m.parquet")),
        "--input",
        &s(&input),
        "--group",
        "label",
        "--keep",
        "id",
        "--output",
        &s(&out),
    ]);
    let want = scan(&input)
        .filter(reclag_pipelines::ops::filter::keep_predicate(
            &model,
            "embedding",
            Some("label"),
            reclag::Route::Best,
            reclag_pipelines::ops::filter::Keep::Id,
        ))
        .collect()
        .unwrap();
    assert!(
        want.height() > 2 * 65_536 && want.height() < n - n / 8,
        "{} rows kept",
        want.height()
    );
    assert!(
        msg.contains(&format!("kept {} of {n} rows", want.height())),
        "{msg}"
    );
    let got = scan(&out).collect().unwrap();
    assert!(
        got.equals_missing(&want),
        "the output is the filter, in order"
    );
    let groups = crate::common::metadata(&out).num_row_groups();
    assert_eq!(groups, 3, "65,536-row row groups");
}
