//! The CLI end to end on generated and bundled data: determinism, bounded memory,
//! output contents, and every bad input the issue lists.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{Float32Builder, ListBuilder};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int32Type};
use arrow_array::{Array, ArrayRef, Float64Array, Int64Array, StringArray};
use reclag::{Rows, ScoreOutput, Work};

use crate::common::{cli, cli_err, cli_ok, clusters, fsl, read_parquet, write_parquet};

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// A small labelled table (3 groups × 60 rows, d = 8) and a model trained on it.
fn fixture(dir: &Path) -> (PathBuf, PathBuf) {
    let (rows, labels) = clusters(3, 60, 8, 1);
    let data = dir.join("train.parquet");
    write_parquet(
        &data,
        vec![
            ("embedding", fsl(&rows, 8)),
            ("label", Arc::new(Int64Array::from(labels)) as ArrayRef),
        ],
    );
    let model = dir.join("model.parquet");
    cli_ok(&[
        "train",
        "--input",
        &s(&data),
        "--label",
        "label",
        "--output",
        &s(&model),
        "--recipe",
        "paper",
        "--epochs",
        "5",
    ]);
    (data, model)
}

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let sample = reclag_pipelines::ops::demo::write_sample(tmp.path()).unwrap();
    let train = |seed: &str, out: &str| {
        let p = tmp.path().join(out);
        cli_ok(&[
            "train",
            "--input",
            &s(&sample[0]),
            "--label",
            "label",
            "--output",
            &s(&p),
            "--seed",
            seed,
            "--recipe",
            "paper",
            "--epochs",
            "10",
        ]);
        std::fs::read(p).unwrap()
    };
    let a = train("7", "a.parquet");
    let b = train("7", "b.parquet");
    let c = train("8", "c.parquet");
    assert_eq!(a, b, "same seed must give a byte-identical model");
    assert_ne!(a, c);
    // kmeans++ is seeded too.
    let k1 = tmp.path().join("k1.parquet");
    let k2 = tmp.path().join("k2.parquet");
    for k in [&k1, &k2] {
        cli_ok(&[
            "train",
            "--input",
            &s(&sample[0]),
            "--label",
            "label",
            "--output",
            &s(k),
            "--init",
            "kmeans++",
            "--recipe",
            "paper",
            "--epochs",
            "3",
        ]);
    }
    assert_eq!(std::fs::read(&k1).unwrap(), std::fs::read(&k2).unwrap());
}

#[test]
fn max_rows_per_group_bounds_the_sample() {
    let tmp = tempfile::tempdir().unwrap();
    let sample = reclag_pipelines::ops::demo::write_sample(tmp.path()).unwrap();
    let m = tmp.path().join("m.parquet");
    cli_ok(&[
        "train",
        "--input",
        &s(&sample[0]),
        "--label",
        "label",
        "--output",
        &s(&m),
        "--max-rows-per-group",
        "40",
        "--recipe",
        "paper",
        "--epochs",
        "2",
    ]);
    let model = reclag::format::load(&m).unwrap();
    assert_eq!(model.groups().len(), 10);
    for g in model.groups() {
        // Calibrated on its own (40) training rows, as recorded below.
        assert_eq!((g.n_train, g.n_calibration), (40, 40), "group {:?}", g.key);
    }
    let prov: serde_json::Value = serde_json::from_str(&model.provenance().training).unwrap();
    assert_eq!(prov["rows_seen"], 4000);
    assert_eq!(prov["rows_kept"], 400);
    // Fewer than 20 held-out rows: calibrated on the training rows, and recorded.
    assert!(
        model
            .groups()
            .iter()
            .all(|g| g.calibrated_on == reclag::CalibratedOn::Train)
    );
}

#[test]
fn model_file_round_trips_and_is_plain_parquet() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, model_path) = fixture(tmp.path());
    let model = reclag::format::load(&model_path).unwrap();
    let batch = read_parquet(&model_path);
    let names: Vec<&str> = batch
        .schema_ref()
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    assert_eq!(
        names,
        [
            "part",
            "group",
            "memory",
            "vector",
            "tau",
            "n_train",
            "n_calibration",
            "calibrated_on",
            "scores"
        ]
    );
    // 30 memories, then the calibration scores: one row per group, best, union.
    assert_eq!(batch.num_rows(), 30 + 3 + 2);
    let tau = batch.column(4).as_primitive::<Float64Type>();
    assert_eq!(tau.value(0), model.groups()[0].tau);
    assert_eq!(batch.column(2).as_primitive::<Int32Type>().value(9), 9);
    let inspect = cli_ok(&["inspect", &s(&model_path)]);
    assert!(
        inspect.contains("dimension      8") && inspect.contains(&reclag::format::checksum(&model))
    );
    // Re-saving a loaded model reproduces the file exactly.
    let again = tmp.path().join("again.parquet");
    reclag::format::save(&model, &again).unwrap();
    assert_eq!(
        std::fs::read(&again).unwrap(),
        std::fs::read(&model_path).unwrap()
    );
}

#[test]
fn score_writes_inputs_plus_outputs_matching_the_core() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, model_path) = fixture(tmp.path());
    let out = tmp.path().join("scored.parquet");
    let msg = cli_ok(&[
        "score",
        "--model",
        &s(&model_path),
        "--input",
        &s(&data),
        "--output",
        &s(&out),
        "--group",
        "label",
    ]);
    assert!(msg.contains("scored 180 rows"), "{msg}");
    let b = read_parquet(&out);
    let names: Vec<&str> = b
        .schema_ref()
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    assert_eq!(
        names,
        [
            "embedding",
            "label",
            "reclag_score",
            "reclag_energy",
            "reclag_ood_probability",
            "reclag_is_ood",
            "reclag_attractor",
            "reclag_p_value"
        ]
    );
    // Same numbers as calling the core directly.
    let model = reclag::format::load(&model_path).unwrap();
    let (rows, labels) = clusters(3, 60, 8, 1);
    let flat: Vec<f32> = rows.iter().flat_map(|r| r.clone().unwrap()).collect();
    let groups: Vec<Option<u32>> = labels
        .iter()
        .map(|&l| Some(model.resolve_int(l, "label").unwrap() as u32))
        .collect();
    let mut o = ScoreOutput::default();
    model
        .score_into(
            &Rows::dense_f32(&flat, 8),
            Some(&groups),
            Work::WithDynamics,
            &mut o,
        )
        .unwrap();
    let score = b.column(2).as_primitive::<Float64Type>();
    let is_ood = b.column(5).as_boolean();
    let att = b.column(6).as_primitive::<Int32Type>();
    let mut p = Vec::new();
    model
        .p_values_into(&o, Some(&groups), reclag::Route::Best, &mut p)
        .unwrap();
    let p_value = b.column(7).as_primitive::<Float64Type>();
    for (i, p) in p.iter().enumerate() {
        assert_eq!(score.value(i), o.score[i]);
        assert_eq!(is_ood.value(i), o.is_ood[i]);
        assert_eq!(att.value(i), o.attractor[i]);
        assert_eq!(p_value.value(i), *p);
    }
    assert_eq!(p.len(), 180);
    // Calibrated at ood_rate 0.05 on the training distribution: most rows are ID.
    let flagged = (0..180).filter(|&i| is_ood.value(i)).count();
    assert!(flagged < 40, "{flagged} of 180 training rows flagged OOD");
    // --keep-columns and union mode.
    let out2 = tmp.path().join("scored2.parquet");
    cli_ok(&[
        "score",
        "--model",
        &s(&model_path),
        "--input",
        &s(&data),
        "--output",
        &s(&out2),
        "--keep-columns",
        "label",
    ]);
    assert_eq!(read_parquet(&out2).num_columns(), 7);
    // No temporary files are left behind.
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn null_nan_and_inf_rows_get_null_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, model_path) = fixture(tmp.path());
    let good = vec![0.5f32; 8];
    let mut nan = good.clone();
    nan[3] = f32::NAN;
    let mut inf = good.clone();
    inf[0] = f32::INFINITY;
    let rows = vec![Some(good.clone()), None, Some(nan), Some(inf), Some(good)];
    let input = tmp.path().join("in.parquet");
    write_parquet(&input, vec![("embedding", fsl(&rows, 8))]);
    let out = tmp.path().join("out.parquet");
    cli_ok(&[
        "score",
        "--model",
        &s(&model_path),
        "--input",
        &s(&input),
        "--output",
        &s(&out),
    ]);
    let b = read_parquet(&out);
    for c in 1..6 {
        let col = b.column(c);
        assert_eq!(col.null_count(), 3, "column {}", b.schema().field(c).name());
        assert!(
            col.is_valid(0)
                && col.is_null(1)
                && col.is_null(2)
                && col.is_null(3)
                && col.is_valid(4)
        );
    }
}

#[test]
fn empty_tables() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, model_path) = fixture(tmp.path());
    let empty = tmp.path().join("empty.parquet");
    write_parquet(
        &empty,
        vec![
            ("embedding", fsl(&[], 8)),
            (
                "label",
                Arc::new(Int64Array::from(Vec::<i64>::new())) as ArrayRef,
            ),
        ],
    );
    let e = cli_err(&[
        "train",
        "--input",
        &s(&empty),
        "--label",
        "label",
        "--output",
        &s(&tmp.path().join("m.parquet")),
    ]);
    assert!(
        e.contains("no training rows") || e.contains("no non-null rows"),
        "{e}"
    );
    assert!(!tmp.path().join("m.parquet").exists());
    // Scoring an empty table is not an error: an empty output with the full schema.
    let out = tmp.path().join("out.parquet");
    let msg = cli_ok(&[
        "score",
        "--model",
        &s(&model_path),
        "--input",
        &s(&empty),
        "--output",
        &s(&out),
    ]);
    assert!(msg.contains("scored 0 rows"), "{msg}");
    let b = read_parquet(&out);
    assert_eq!((b.num_rows(), b.num_columns()), (0, 8));
}

#[test]
fn group_with_fewer_rows_than_memories() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut rows, mut labels) = clusters(2, 50, 8, 3);
    let (r3, _) = clusters(1, 3, 8, 9);
    rows.extend(r3);
    labels.extend([7, 7, 7]);
    let data = tmp.path().join("t.parquet");
    write_parquet(
        &data,
        vec![
            ("embedding", fsl(&rows, 8)),
            ("label", Arc::new(Int64Array::from(labels)) as ArrayRef),
        ],
    );
    let m = tmp.path().join("m.parquet");
    let out = cli_ok(&[
        "train",
        "--input",
        &s(&data),
        "--label",
        "label",
        "--output",
        &s(&m),
        "--recipe",
        "paper",
        "--epochs",
        "3",
    ]);
    assert!(
        out.contains("group 7 had 3 training rows, fewer than --memories 10; it uses 3 memories"),
        "{out}"
    );
    let model = reclag::format::load(&m).unwrap();
    let g7 = &model.groups()[model.resolve_int(7, "label").unwrap()];
    assert_eq!(
        (g7.m, g7.n_train, g7.calibrated_on),
        (3, 3, reclag::CalibratedOn::Train)
    );
}

#[test]
fn wrong_dimension_names_column_expected_and_found() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, model_path) = fixture(tmp.path());
    let input = tmp.path().join("d4.parquet");
    write_parquet(&input, vec![("emb", fsl(&[Some(vec![1.0; 4])], 4))]);
    let e = cli_err(&[
        "score",
        "--model",
        &s(&model_path),
        "--input",
        &s(&input),
        "--output",
        &s(&tmp.path().join("o.parquet")),
        "--embedding",
        "emb",
    ]);
    assert!(
        e.contains("column 'emb': expected embedding dimension 8, found 4"),
        "{e}"
    );
    assert!(e.contains("d4.parquet"), "{e}");
    assert!(!tmp.path().join("o.parquet").exists());
}

#[test]
fn ragged_list_names_the_row() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, model_path) = fixture(tmp.path());
    let mut b = ListBuilder::new(Float32Builder::new());
    for len in [8, 8, 7, 8] {
        b.values().append_slice(&vec![0.1; len]);
        b.append(true);
    }
    let input = tmp.path().join("ragged.parquet");
    write_parquet(
        &input,
        vec![("embedding", Arc::new(b.finish()) as ArrayRef)],
    );
    let e = cli_err(&[
        "score",
        "--model",
        &s(&model_path),
        "--input",
        &s(&input),
        "--output",
        &s(&tmp.path().join("o.parquet")),
    ]);
    assert!(
        e.contains("expected embedding dimension 8, found 7 at row 2"),
        "{e}"
    );
}

#[test]
fn list_and_float64_inputs_score_like_fixed_size_f32() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, model_path) = fixture(tmp.path());
    let (rows, labels) = clusters(3, 60, 8, 1);
    let mut lb = ListBuilder::new(arrow_array::builder::Float64Builder::new());
    for r in &rows {
        lb.values().append_slice(
            &r.as_ref()
                .unwrap()
                .iter()
                .map(|&v| f64::from(v))
                .collect::<Vec<_>>(),
        );
        lb.append(true);
    }
    let list_in = tmp.path().join("list.parquet");
    write_parquet(
        &list_in,
        vec![
            ("embedding", Arc::new(lb.finish()) as ArrayRef),
            ("label", Arc::new(Int64Array::from(labels)) as ArrayRef),
        ],
    );
    let (a, b) = (tmp.path().join("a.parquet"), tmp.path().join("b.parquet"));
    cli_ok(&[
        "score",
        "--model",
        &s(&model_path),
        "--input",
        &s(&data),
        "--output",
        &s(&a),
        "--group",
        "label",
    ]);
    cli_ok(&[
        "score",
        "--model",
        &s(&model_path),
        "--input",
        &s(&list_in),
        "--output",
        &s(&b),
        "--group",
        "label",
    ]);
    let (a, b) = (read_parquet(&a), read_parquet(&b));
    for c in 2..7 {
        assert_eq!(a.column(c).to_data(), b.column(c).to_data(), "column {c}");
    }
}

#[test]
fn unknown_group_names_value_and_known_groups() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, model_path) = fixture(tmp.path());
    let input = tmp.path().join("g.parquet");
    write_parquet(
        &input,
        vec![
            (
                "embedding",
                fsl(&[Some(vec![0.1; 8]), Some(vec![0.2; 8])], 8),
            ),
            ("label", Arc::new(Int64Array::from(vec![1, 42])) as ArrayRef),
        ],
    );
    let e = cli_err(&[
        "score",
        "--model",
        &s(&model_path),
        "--input",
        &s(&input),
        "--output",
        &s(&tmp.path().join("o.parquet")),
        "--group",
        "label",
    ]);
    assert!(
        e.contains("unknown group 42 (column 'label'); the model knows groups: 0, 1, 2"),
        "{e}"
    );
    // A string column against integer groups is a type error, not a lookup miss.
    let input2 = tmp.path().join("g2.parquet");
    write_parquet(
        &input2,
        vec![
            ("embedding", fsl(&[Some(vec![0.1; 8])], 8)),
            ("label", Arc::new(StringArray::from(vec!["a"])) as ArrayRef),
        ],
    );
    let e = cli_err(&[
        "score",
        "--model",
        &s(&model_path),
        "--input",
        &s(&input2),
        "--output",
        &s(&tmp.path().join("o.parquet")),
        "--group",
        "label",
    ]);
    assert!(
        e.contains("column 'label' has type Utf8; expected an integer type"),
        "{e}"
    );
}

#[test]
fn string_labels_and_null_group_route_by_best_margin() {
    let tmp = tempfile::tempdir().unwrap();
    let (rows, labels) = clusters(2, 40, 8, 5);
    let names: Vec<Option<&str>> = labels
        .iter()
        .map(|&l| Some(if l == 0 { "cat" } else { "dog" }))
        .collect();
    let data = tmp.path().join("t.parquet");
    write_parquet(
        &data,
        vec![
            ("embedding", fsl(&rows, 8)),
            (
                "animal",
                Arc::new(StringArray::from(names.clone())) as ArrayRef,
            ),
        ],
    );
    let m = tmp.path().join("m.parquet");
    cli_ok(&[
        "train",
        "--input",
        &s(&data),
        "--label",
        "animal",
        "--output",
        &s(&m),
        "--recipe",
        "paper",
        "--epochs",
        "3",
    ]);
    let q = tmp.path().join("q.parquet");
    let two = vec![rows[0].clone(), rows[0].clone()];
    write_parquet(
        &q,
        vec![
            ("embedding", fsl(&two, 8)),
            (
                "animal",
                Arc::new(StringArray::from(vec![Some("cat"), None])) as ArrayRef,
            ),
        ],
    );
    let o = tmp.path().join("o.parquet");
    cli_ok(&[
        "score",
        "--model",
        &s(&m),
        "--input",
        &s(&q),
        "--output",
        &s(&o),
        "--group",
        "animal",
    ]);
    let b = read_parquet(&o);
    let energy = b
        .column_by_name("reclag_energy")
        .unwrap()
        .as_primitive::<Float64Type>();
    let model = reclag::format::load(&m).unwrap();
    // Row 1 (null group) is routed by best margin: a "cat" row goes to "cat", so it
    // scores as row 0 does; union mode gives another energy.
    let flat: Vec<f32> = rows[0].clone().unwrap();
    let mut out = ScoreOutput::default();
    model
        .score_into(&Rows::dense_f32(&flat, 8), None, Work::EnergyOnly, &mut out)
        .unwrap();
    assert_eq!(energy.value(1), out.energy[0]);
    assert_eq!(energy.value(0), energy.value(1));
    assert_eq!(
        out.group[0] as usize,
        model.resolve_str("cat", "animal").unwrap()
    );
    let mut union = ScoreOutput::default();
    model
        .score_routed(
            &Rows::dense_f32(&flat, 8),
            None,
            reclag::Route::Union,
            Work::EnergyOnly,
            &mut union,
        )
        .unwrap();
    assert_ne!(union.energy[0], energy.value(1));
    let e = cli_err(&[
        "score",
        "--model",
        &s(&m),
        "--input",
        &s(&q),
        "--output",
        &s(&o),
        "--group-from-logits",
        "animal",
    ]);
    assert!(e.contains("integer groups"), "{e}");
}

#[test]
fn unsupported_label_type_is_rejected_before_reading() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("t.parquet");
    write_parquet(
        &data,
        vec![
            ("embedding", fsl(&[Some(vec![0.1; 8])], 8)),
            ("label", Arc::new(Float64Array::from(vec![1.5])) as ArrayRef),
        ],
    );
    let e = cli_err(&[
        "train",
        "--input",
        &s(&data),
        "--label",
        "label",
        "--output",
        &s(&tmp.path().join("m.parquet")),
    ]);
    assert!(
        e.contains("column 'label' has type Float64; expected an integer or string type"),
        "{e}"
    );
}

#[test]
fn missing_column_lists_available_columns() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, model_path) = fixture(tmp.path());
    let e = cli_err(&[
        "score",
        "--model",
        &s(&model_path),
        "--input",
        &s(&data),
        "--output",
        &s(&tmp.path().join("o.parquet")),
        "--embedding",
        "vec",
    ]);
    assert!(
        e.contains("column 'vec' not found; available columns: embedding, label"),
        "{e}"
    );
    let e = cli_err(&[
        "train",
        "--input",
        &s(&data),
        "--label",
        "class",
        "--output",
        &s(&tmp.path().join("m.parquet")),
    ]);
    assert!(
        e.contains("column 'class' not found; available columns: embedding, label"),
        "{e}"
    );
}

#[test]
fn corrupt_truncated_and_foreign_model_files() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, model_path) = fixture(tmp.path());
    let bytes = std::fs::read(&model_path).unwrap();
    let load = |b: &[u8], name: &str| {
        let p = tmp.path().join(name);
        std::fs::write(&p, b).unwrap();
        reclag::format::load(&p)
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    let e = load(&bytes[..bytes.len() / 2], "truncated.parquet");
    assert!(
        e.contains("truncated.parquet") && e.contains("not a readable Parquet file"),
        "{e}"
    );
    // Flip one byte inside a float of the vector column: the checksum catches it.
    let model = reclag::format::load(&model_path).unwrap();
    let needle = model.groups()[0].xi[0].to_le_bytes();
    let pos = bytes
        .windows(8)
        .position(|w| w == needle)
        .expect("memory value stored plain");
    let mut flipped = bytes.clone();
    flipped[pos] ^= 0x01;
    let e = load(&flipped, "flipped.parquet");
    assert!(
        e.contains("checksum mismatch") || e.contains("not a readable Parquet file"),
        "{e}"
    );
    // A perfectly good Parquet file that is not a model.
    let e = reclag::format::load(&data).unwrap_err().to_string();
    assert!(e.contains("not a reclag model"), "{e}");
    let e = load(b"garbage", "garbage.parquet");
    assert!(e.contains("not a readable Parquet file"), "{e}");
    // The CLI surfaces the same message.
    let e = cli_err(&["inspect", &s(&tmp.path().join("truncated.parquet"))]);
    assert!(e.contains("not a readable Parquet file"), "{e}");
}

#[test]
fn usage_errors_say_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, model_path) = fixture(tmp.path());
    let o = s(&tmp.path().join("o.parquet"));
    let e = cli_err(&[
        "score",
        "--model",
        &s(&model_path),
        "--input",
        &s(&data),
        "--output",
        &o,
        "--group",
        "label",
        "--group-from-logits",
        "x",
    ]);
    assert!(e.contains("cannot be used with"), "{e}");
    let e = cli_err(&[
        "score",
        "--model",
        &s(&model_path),
        "--input",
        "/nonexistent/x.parquet",
        "--output",
        &o,
    ]);
    assert!(e.contains("does not exist"), "{e}");
    let e = cli_err(&[
        "eval",
        "--model",
        &s(&model_path),
        "--id",
        &s(&data),
        "--ood",
        &format!("x={}", s(&data)),
        "--baselines",
        "knn",
    ]);
    assert!(
        e.contains("need the ID training table: add --train PATH"),
        "{e}"
    );
    let e = cli_err(&[
        "eval",
        "--model",
        &s(&model_path),
        "--id",
        &s(&data),
        "--ood",
        &format!("x={}", s(&data)),
        "--baselines",
        "nope",
    ]);
    assert!(e.contains("unknown baseline 'nope'"), "{e}");
    let e = cli_err(&[
        "train",
        "--input",
        &s(&data),
        "--output",
        &o,
        "--ood-rate",
        "1.5",
    ]);
    assert!(e.contains("ood-rate") && e.contains("1.5"), "{e}");
    let help = cli_ok(&["train", "--help"]);
    assert!(
        help.contains("--max-rows-per-group") && help.contains("groups × N × d × 4 bytes"),
        "{help}"
    );
}

#[test]
fn demo_runs_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let out = cli_ok(&["demo", "--dir", &s(tmp.path())]);
    for want in [
        "trained 10 group(s)",
        "scored 1000 rows",
        "mnist",
        "font_letters",
        "knn",
        "demo finished",
    ] {
        assert!(out.contains(want), "missing '{want}' in:\n{out}");
    }
    // The eval table's reclag cell for mnist is a real AUROC well above chance.
    let line = out.lines().find(|l| l.starts_with("mnist")).unwrap();
    let auroc: f64 = line
        .split('|')
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(auroc > 0.9, "{line}");
}

/// An in-memory standard output the test can read back.
#[derive(Clone, Default)]
struct SharedBuf(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for SharedBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn run_stdio(args: &[&str], stdin: Vec<u8>) -> (Result<String, String>, Vec<u8>) {
    use reclag_pipelines::store::{StoreEnv, Stores};
    let stdout = SharedBuf::default();
    let stores = Stores::new(StoreEnv::default()).with_stdio(
        Box::new(std::io::Cursor::new(stdin)),
        Box::new(stdout.clone()),
    );
    let mut out = Vec::new();
    let mut full = vec!["reclag"];
    full.extend_from_slice(args);
    let r = reclag_pipelines::cli::run_in(full, stores, &mut out)
        .map(|_| String::from_utf8(out).unwrap())
        .map_err(|e| e.to_string());
    let bytes = stdout.0.lock().unwrap().clone();
    (r, bytes)
}

#[test]
fn score_streams_arrow_ipc_through_stdin_and_stdout() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, model) = fixture(tmp.path());
    let (data_s, model_s) = (s(&data), s(&model));
    // Parquet → an Arrow IPC stream on stdout → a second run reading it on stdin →
    // Parquet: the composed pipeline equals scoring the file directly.
    let keep = ["--group", "label", "--keep-columns", "embedding,label"];
    let mut args = vec![
        "score", "--model", &model_s, "--input", &data_s, "--output", "-",
    ];
    args.extend(keep);
    let (r, ipc) = run_stdio(&args, Vec::new());
    r.unwrap();
    let reader = arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(ipc.clone()), None)
        .expect("stdout is an Arrow IPC stream");
    let n: usize = reader.map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(n, 180);
    let piped = tmp.path().join("piped.parquet");
    let piped_s = s(&piped);
    let mut args = vec![
        "score", "--model", &model_s, "--input", "-", "--output", &piped_s,
    ];
    args.extend(keep);
    let (r, _) = run_stdio(&args, ipc);
    assert!(r.unwrap().contains("scored 180 rows"));
    let direct = tmp.path().join("direct.parquet");
    cli_ok(&[
        "score",
        "--model",
        &model_s,
        "--input",
        &data_s,
        "--output",
        &s(&direct),
        "--group",
        "label",
    ]);
    assert_eq!(read_parquet(&piped), read_parquet(&direct));

    // Stdin that is not an Arrow stream: a clear error and nothing on stdout.
    let (r, out) = run_stdio(
        &[
            "score", "--model", &model_s, "--input", "-", "--output", "-",
        ],
        std::fs::read(&data).unwrap(),
    );
    let e = r.unwrap_err();
    assert!(e.contains("<stdin>: not an Arrow IPC stream"), "{e}");
    assert!(out.is_empty());
    // `-` must be the only input.
    let (r, _) = run_stdio(
        &[
            "score", "--model", &model_s, "--input", "-", &data_s, "--output", "-",
        ],
        Vec::new(),
    );
    assert!(r.unwrap_err().contains("must be the only input"));
}

/// `reclag score` without the embedding in its output scores each page as it is
/// decoded (`reclag_parquet::Fused`). It must give what scoring materialised batches gives,
/// row for row, including a row group the fast decoder gives up on part-way (nulls),
/// rows split across pages, and a second list column decoded beside the fused one.
#[test]
fn page_fused_scoring_equals_scoring_whole_batches() {
    use arrow_array::RecordBatch;
    use parquet::file::properties::WriterProperties;
    let tmp = tempfile::tempdir().unwrap();
    let (_, model_path) = fixture(tmp.path());
    let (mut rows, mut labels) = clusters(3, 400, 8, 7);
    rows.extend((0..50).map(|i| Some((0..8).map(|j| ((i * 7 + j) % 5) as f32 - 9.0).collect())));
    labels.extend((0..50).map(|i| i % 3));
    // "dict": the writers' default, pages indexing a dictionary until it outgrows its
    // 2 KiB page, then PLAIN.
    for (name, nulls, dict) in [
        ("clean", false, false),
        ("nulls", true, false),
        ("dict", false, true),
    ] {
        let mut rows = rows.clone();
        if nulls {
            for r in &mut rows[400..405] {
                *r = None;
            }
        }
        let n = rows.len() as i64;
        let logits: Vec<Option<Vec<f32>>> = (0..n)
            .map(|i| Some((0..3).map(|j| (i * 3 + j) as f32 * 0.25).collect()))
            .collect();
        let batch = RecordBatch::try_from_iter(vec![
            (
                "id",
                Arc::new(Int64Array::from_iter_values(0..n)) as ArrayRef,
            ),
            ("embedding", fsl(&rows, 8)),
            (
                "label",
                Arc::new(Int64Array::from(labels.clone())) as ArrayRef,
            ),
            // A second list column: decoded beside the fused one and kept.
            ("logits", fsl(&logits, 3)),
        ])
        .unwrap();
        let input = tmp.path().join(format!("{name}.parquet"));
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(300))
            .set_data_page_size_limit(500)
            .set_write_batch_size(13)
            .set_dictionary_enabled(dict)
            .set_dictionary_page_size_limit(2048)
            .build();
        let f = std::fs::File::create(&input).unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(f, batch.schema(), Some(props)).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let score = |keep: &str, out: &Path| {
            cli_ok(&[
                "score",
                "--model",
                &s(&model_path),
                "--input",
                &s(&input),
                "--output",
                &s(out),
                "--group",
                "label",
                "--keep-columns",
                keep,
            ])
        };
        let (fused, whole) = (
            tmp.path().join("fused.parquet"),
            tmp.path().join("whole.parquet"),
        );
        let msg_fused = score("id,logits", &fused);
        let msg_whole = score("id,embedding,logits", &whole);
        assert_eq!(
            msg_fused.replace("fused", "whole"),
            msg_whole,
            "{name}: summaries"
        );
        let (a, b) = (read_parquet(&fused), read_parquet(&whole));
        assert_eq!(a.num_rows(), rows.len());
        assert_eq!(a.column(0), b.column(0), "{name}: id");
        assert_eq!(a.column(1), b.column(2), "{name}: logits");
        for c in 2..7 {
            assert_eq!(
                a.column(c).to_data(),
                b.column(c + 1).to_data(),
                "{name}: {}",
                a.schema().field(c).name()
            );
        }
        let ood = a.column(5).as_boolean();
        assert!(ood.true_count() >= 40, "{name}: the far rows are OOD");
        assert_eq!(ood.null_count(), if nulls { 5 } else { 0 }, "{name}");
    }
}

/// `--decode-only` (the benchmarks' floors) reads every row, both the way `score` does
/// (pages read in place, no math) and into Arrow arrays, writes nothing, and reports a
/// damaged page with the file's name instead of a short count.
#[test]
fn decode_only_reads_every_row_and_writes_nothing() {
    use arrow_array::RecordBatch;
    use parquet::basic::Compression;
    use parquet::file::properties::WriterProperties;
    let tmp = tempfile::tempdir().unwrap();
    let (_, model) = fixture(tmp.path());
    let (rows, labels) = clusters(3, 2000, 8, 11);
    let batch = RecordBatch::try_from_iter(vec![
        ("embedding", fsl(&rows, 8)),
        ("label", Arc::new(Int64Array::from(labels)) as ArrayRef),
    ])
    .unwrap();
    let out = tmp.path().join("never.parquet");
    // Plain 16 KiB pages in two row groups. `score` reads snappy pages of noisy floats
    // where they were decompressed (`FusedGroup::rows_at`) and uncompressed ones as
    // copies (`FusedGroup::rows`): the checksum consumer must count both.
    for codec in [Compression::SNAPPY, Compression::UNCOMPRESSED] {
        let data = tmp.path().join(format!("{codec}.parquet"));
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(4000))
            .set_data_page_size_limit(16 << 10)
            .set_dictionary_enabled(false)
            .set_compression(codec)
            .build();
        let f = std::fs::File::create(&data).unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(f, batch.schema(), Some(props)).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let run = |input: &Path, mode: &str| {
            cli(&[
                "score",
                "--model",
                &s(&model),
                "--input",
                &s(input),
                "--output",
                &s(&out),
                "--group",
                "label",
                "--keep-columns",
                "label",
                "--decode-only",
                mode,
            ])
        };
        for mode in ["as-score", "arrow"] {
            let msg = run(&data, mode).unwrap();
            assert_eq!(
                msg.trim(),
                "decoded 6000 rows (decode only: nothing written)",
                "{codec} {mode}"
            );
            assert!(!out.exists(), "{codec} {mode}: wrote {}", out.display());
        }
        // The first page header overwritten: each mode names the file.
        let mut bytes = std::fs::read(&data).unwrap();
        bytes[4..64].fill(0xFF);
        let bad = tmp.path().join(format!("damaged-{codec}.parquet"));
        std::fs::write(&bad, bytes).unwrap();
        for mode in ["as-score", "arrow"] {
            let e = run(&bad, mode).unwrap_err();
            assert!(
                e.contains(&format!("damaged-{codec}.parquet")),
                "{codec} {mode}: {e}"
            );
        }
    }
}

/// A bad flag is reported once, with clap's hint, and without clap's own "error: "
/// prefix (the binary adds one to every error).
#[test]
fn bad_flags_are_reported_with_one_error_prefix() {
    let e = cli_err(&["score", "--decode-only", "bogus"]);
    assert!(!e.starts_with("error:"), "{e}");
    assert!(e.contains("invalid value 'bogus'"), "{e}");
    assert!(e.contains("[possible values: as-score, arrow]"), "{e}");
}

/// `--beta auto` belongs to the whitened recipe; `--beta` takes a number otherwise.
#[test]
fn train_refuses_settings_of_the_other_recipe() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, _) = fixture(tmp.path());
    let m = tmp.path().join("m2.parquet");
    let base = [
        "train",
        "--input",
        &s(&data),
        "--label",
        "label",
        "--output",
        &s(&m),
    ];
    let e = cli_err(&[&base[..], &["--recipe", "paper", "--beta", "auto"]].concat());
    assert!(
        e.contains("auto chooses beta for the whitened recipe only"),
        "{e}"
    );
    let e = cli_err(&[&base[..], &["--beta", "warm"]].concat());
    assert!(
        e.contains("--beta takes a number or `auto`; found 'warm'"),
        "{e}"
    );
    // The SFNN settings belong to the paper recipe; the whitened default refuses them.
    let e = cli_err(&[&base[..], &["--epochs", "3", "--lr", "0.01"]].concat());
    assert!(
        e.contains("--epochs, --lr set(s) the paper recipe's SFNN training")
            && e.contains("--recipe paper"),
        "{e}"
    );
    assert!(!m.exists());
}

/// `--output` naming a symbolic link writes the file it names and keeps the link; a
/// FIFO, a device or a directory is refused with a message and left as it was; the
/// temporary a killed run left behind is removed by the next run, and a temporary a
/// live writer holds is not.
#[test]
fn outputs_write_through_links_and_refuse_special_files() {
    use std::os::unix::fs::FileTypeExt;
    let tmp = tempfile::tempdir().unwrap();
    let (data, model) = fixture(tmp.path());
    let score_to = |out: &Path| {
        cli(&[
            "score",
            "--model",
            &s(&model),
            "--input",
            &s(&data),
            "--output",
            &s(out),
        ])
    };
    let reference = tmp.path().join("reference.parquet");
    score_to(&reference).unwrap();
    let expected = std::fs::read(&reference).unwrap();

    let real = tmp.path().join("real.parquet");
    std::fs::write(&real, b"yesterday").unwrap();
    let link = tmp.path().join("link.parquet");
    std::os::unix::fs::symlink("real.parquet", &link).unwrap();
    score_to(&link).unwrap();
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(std::fs::read(&real).unwrap(), expected);

    let fifo = tmp.path().join("fifo");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let err = score_to(&fifo).unwrap_err();
    assert!(err.contains("is a FIFO, not a regular file"), "{err}");
    assert!(
        std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo()
    );
    // A link to a device (as /dev/stdout is) is refused, and the link stays.
    let dev = tmp.path().join("dev.parquet");
    std::os::unix::fs::symlink("/dev/null", &dev).unwrap();
    let err = score_to(&dev).unwrap_err();
    assert!(err.contains("is a device") && err.contains("`-`"), "{err}");
    assert!(
        std::fs::symlink_metadata(&dev)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    let err = cli(&[
        "sql",
        "--model",
        &format!("m={}", s(&model)),
        "--output",
        &s(&dev),
        "SELECT 1 AS one",
    ])
    .unwrap_err();
    assert!(err.contains("is a device"), "{err}");

    // A run killed mid-write left its temporary; the next run removes it.
    let out = tmp.path().join("scored.parquet");
    let stale = tmp.path().join(".scored.parquet.tmp-4194304");
    std::fs::write(&stale, vec![7u8; 1 << 16]).unwrap();
    let live = tmp.path().join(".scored.parquet.tmp-4194305");
    let held = std::fs::File::create(&live).unwrap();
    held.lock().unwrap();
    score_to(&out).unwrap();
    assert!(!stale.exists(), "the stale temporary is still there");
    assert!(live.exists(), "a live writer's temporary was removed");
    assert_eq!(std::fs::read(&out).unwrap(), expected);
}

/// Files of one input with different columns: `score` and `filter` fail naming the
/// file and the column, whichever file comes first, instead of dropping a column.
#[test]
fn inputs_with_different_columns_fail_naming_file_and_column() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, model) = fixture(tmp.path());
    let (rows, labels) = clusters(3, 10, 8, 2);
    let emb = fsl(&rows, 8);
    let label: ArrayRef = Arc::new(Int64Array::from(labels.clone()));
    let names: ArrayRef = Arc::new(StringArray::from_iter_values(
        labels.iter().map(|l| format!("class-{l}")),
    ));
    for (first, second) in [("a", "b"), ("b", "a")] {
        let dir = tmp.path().join(format!("in-{first}"));
        std::fs::create_dir(&dir).unwrap();
        // `second` has the extra column: after the file without it in the first
        // round, before it in the second.
        write_parquet(
            &dir.join(format!("{first}.parquet")),
            vec![("embedding", emb.clone()), ("label", label.clone())],
        );
        write_parquet(
            &dir.join(format!("{second}.parquet")),
            vec![
                ("embedding", emb.clone()),
                ("label", label.clone()),
                ("label_name", names.clone()),
            ],
        );
        for cmd in ["score", "filter"] {
            let out = tmp.path().join(format!("{cmd}-{first}.parquet"));
            let (model, dir, out_s) = (s(&model), s(&dir), s(&out));
            let mut args = vec![cmd, "--model", &model, "--input", &dir, "--output", &out_s];
            if cmd == "filter" {
                args.extend(["--keep", "id"]);
            }
            let err = cli_err(&args);
            assert!(
                err.contains("'label_name'") && err.contains("all inputs must share one schema"),
                "{cmd}, {first} first: {err}"
            );
            assert!(!out.exists());
        }
    }
}

/// A Parquet file of `rows` random `d`-wide embeddings and a `label` in 0..4, written
/// as ONE row group (what pyarrow does below 1M rows).
fn write_one_row_group(path: &Path, rows: usize, d: usize, seed: u64) {
    use arrow_array::{FixedSizeListArray, Float32Array, RecordBatch};
    let mut rng = reclag::rng::Rng::new(seed);
    let values: Vec<f32> = (0..rows * d).map(|_| rng.next_f64() as f32 - 0.5).collect();
    let item = Arc::new(arrow_schema::Field::new(
        "item",
        arrow_schema::DataType::Float32,
        false,
    ));
    let emb = FixedSizeListArray::new(item, d as i32, Arc::new(Float32Array::from(values)), None);
    let label = Int64Array::from_iter_values((0..rows as i64).map(|i| i % 4));
    let batch = RecordBatch::try_from_iter([
        ("embedding", Arc::new(emb) as ArrayRef),
        ("label", Arc::new(label) as ArrayRef),
    ])
    .unwrap();
    crate::common::write_row_groups(path, &batch, rows);
}

/// Runs the CLI with `args` in a child process and returns its peak resident set size
/// in MiB (the child's VmHWM, which it prints as it exits), failing the test if the
/// run failed.
fn peak_rss_mib(args: &[&str]) -> f64 {
    let argv: Vec<String> = std::iter::once("reclag")
        .chain(args.iter().copied())
        .map(String::from)
        .collect();
    let out = crate::drift::cli_child(&serde_json::Value::from(argv))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?} failed: {err}");
    let kb: f64 = err
        .lines()
        .find_map(|l| l.strip_prefix("peak_rss_kb="))
        .unwrap_or_else(|| panic!("the child printed no peak: {err}"))
        .parse()
        .unwrap();
    kb / 1024.0
}

/// `reclag score` keeping every column of 2048-d rows stored as one row group per file
/// (as pyarrow writes them): peak memory must not follow the input's length. Four times
/// the rows (128 MiB against 512 MiB of embeddings) may cost at most 128 MiB more; when
/// the fast reader held the whole row group, it cost about twice the extra input.
#[test]
fn score_memory_does_not_grow_with_the_input() {
    let tmp = tempfile::tempdir().unwrap();
    let d = 2048;
    let train = tmp.path().join("train.parquet");
    write_one_row_group(&train, 1000, d, 1);
    let model = tmp.path().join("model.parquet");
    crate::common::train_model(&train, &model, 2);
    let mut peaks = vec![];
    for rows in [16 * 1024, 64 * 1024] {
        let input = tmp.path().join(format!("in-{rows}.parquet"));
        write_one_row_group(&input, rows, d, 2);
        let out = tmp.path().join(format!("out-{rows}.parquet"));
        let peak = peak_rss_mib(&[
            "score",
            "--model",
            &s(&model),
            "--input",
            &s(&input),
            "--output",
            &s(&out),
            "--group",
            "label",
        ]);
        // Every row and every input column came through.
        let meta = crate::common::metadata(&out);
        assert_eq!(meta.file_metadata().num_rows(), rows as i64);
        assert!(
            meta.file_metadata()
                .schema_descr()
                .root_schema()
                .get_fields()
                .len()
                >= 7
        );
        std::fs::remove_file(&input).unwrap();
        std::fs::remove_file(&out).unwrap();
        peaks.push(peak);
    }
    eprintln!(
        "peak RSS: {:.0} MiB at 16k rows, {:.0} MiB at 64k rows",
        peaks[0], peaks[1]
    );
    assert!(
        peaks[1] < peaks[0] + 128.0,
        "peak RSS grew with the input: {:.0} MiB at 16k rows, {:.0} MiB at 64k rows",
        peaks[0],
        peaks[1]
    );
}

/// A reader that closes standard output early (`| head -c 100`, `| head -1`) ends the
/// command quietly with exit 0, as Unix tools do; before, both exited 1 with
/// "Broken pipe". Run as a real child process through the binary's `main`.
#[test]
fn a_closed_standard_output_ends_quietly_with_success() {
    use std::io::Read;
    let tmp = tempfile::tempdir().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/demo");
    let model = tmp.path().join("m.parquet");
    crate::common::train_model(&root.join("id_train.parquet"), &model, 2);
    let test = root.join("id_test.parquet").display().to_string();
    let m = s(&model);
    for args in [
        serde_json::json!([
            "reclag", "score", "--model", m, "--input", test, "--output", "-"
        ]),
        serde_json::json!([
            "reclag",
            "sql",
            "--table",
            format!("t={test}"),
            "SELECT * FROM t"
        ]),
    ] {
        let mut child = crate::drift::cli_child(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut head = [0u8; 100];
        child.stdout.take().unwrap().read_exact(&mut head).unwrap();
        // The reader is gone; the next writes fail with EPIPE.
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args}: {:?}\n{err}", out.status);
        assert!(
            !err.contains("error") && !err.contains("Broken pipe"),
            "{args}: {err}"
        );
    }
}
