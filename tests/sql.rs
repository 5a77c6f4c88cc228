//! SQL end to end: the DataFusion functions against `reclag score`, the `reclag sql`
//! command, and SQL-specific bad input.

use std::path::Path;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_array::builder::{Float32Builder, ListBuilder};
use datafusion::execution::context::SessionContext;
use datafusion::prelude::{ParquetReadOptions, SessionConfig};
use reclag_udfs::ModelRegistry;

use crate::common::{cli_ok, read_parquet, shared, train_model, write_parquet};

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// One partition, so a single-file scan keeps the file's row order.
async fn ctx_with(table: &Path, model: &Path) -> SessionContext {
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
    let reg = ModelRegistry::new();
    reg.register("m", Arc::new(reclag::format::load(model).unwrap()));
    reclag_udfs::register_all(&ctx, reg);
    ctx.register_parquet("t", s(table).as_str(), ParquetReadOptions::default())
        .await
        .unwrap();
    ctx
}

async fn query(ctx: &SessionContext, sql: &str) -> RecordBatch {
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    arrow_select::concat::concat_batches(&batches[0].schema(), &batches).unwrap()
}

async fn query_err(ctx: &SessionContext, sql: &str) -> String {
    match ctx.sql(sql).await {
        Err(e) => e.to_string(),
        Ok(df) => df.collect().await.map(|_| ()).unwrap_err().to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_equals_score_row_for_row_on_text_wordnet() {
    let Some(dir) = shared("data/text_wordnet") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("m.parquet");
    let test = dir.join("id_test.parquet");
    let ood = dir.join("ood_fortunes_en.parquet");
    cli_ok(&[
        "train",
        "--input",
        &s(&dir.join("id_train.parquet")),
        "--label",
        "label",
        "--output",
        &s(&model),
        "--recipe",
        "paper",
        "--epochs",
        "5",
    ]);
    for (input, group_sql, group_flag) in [
        (&test, ", label", Some("label")),
        (&test, "", None),
        // OOD rows have a NULL label: union mode row by row, in both paths.
        (&ood, ", label", Some("label")),
    ] {
        let scored = tmp.path().join("scored.parquet");
        let mut args = vec![
            "score",
            "--model",
            model.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--output",
            scored.to_str().unwrap(),
        ];
        if let Some(g) = group_flag {
            args.extend(["--group", g]);
        }
        cli_ok(&args);
        let want = read_parquet(&scored);
        let ctx = ctx_with(input, &model).await;
        let got = query(
            &ctx,
            &format!(
                "SELECT reclag_score('m', embedding{g}), reclag_energy('m', embedding{g}), \
                 reclag_ood_probability('m', embedding{g}), reclag_is_ood('m', embedding{g}), \
                 reclag_attractor('m', embedding{g}), reclag_p_value('m', embedding{g}) FROM t",
                g = group_sql
            ),
        )
        .await;
        assert_eq!(got.num_rows(), want.num_rows());
        assert!(got.num_rows() > 1000);
        for (k, name) in reclag_pipelines::ops::score::OUTPUT_COLUMNS
            .iter()
            .enumerate()
        {
            let w = want.column_by_name(name).unwrap();
            assert_eq!(
                got.column(k).to_data(),
                w.to_data(),
                "{name} differs (group {group_flag:?}, {})",
                input.display()
            );
        }
    }
}

#[test]
fn reclag_sql_command_outputs_and_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let sample = reclag_pipelines::ops::demo::write_sample(tmp.path()).unwrap();
    let model = tmp.path().join("m.parquet");
    train_model(&sample[0], &model, 5);
    let scored = tmp.path().join("scored.parquet");
    let msg = cli_ok(&[
        "score",
        "--model",
        &s(&model),
        "--input",
        &s(&sample[2]),
        "--output",
        &s(&scored),
        "--group-from-logits",
        "logits",
    ]);
    let table = format!("mnist={}", s(&sample[2]));
    let mref = format!("prod={}", s(&model));
    // Union mode in SQL, routed mode in score: compare each with its own kind.
    let out = cli_ok(&[
        "sql",
        "--table",
        &table,
        "--model",
        &mref,
        "SELECT count(*) AS n FROM mnist WHERE reclag_is_ood('prod', embedding)",
    ]);
    assert!(out.contains("| n "), "{out}");
    let union_scored = tmp.path().join("u.parquet");
    let umsg = cli_ok(&[
        "score",
        "--model",
        &s(&model),
        "--input",
        &s(&sample[2]),
        "--output",
        &s(&union_scored),
    ]);
    let n_ood: String = umsg
        .split('(')
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    assert!(
        out.contains(&format!("| {n_ood} ")),
        "sql count vs score '{umsg}':\n{out}"
    );
    assert!(msg.contains("scored 500 rows"), "{msg}");
    for ext in ["parquet", "csv", "ndjson"] {
        let o = tmp.path().join(format!("r.{ext}"));
        let m = cli_ok(&[
            "sql",
            "--table",
            &table,
            "--model",
            &mref,
            "SELECT reclag_score('prod', embedding) AS s FROM mnist",
            "--output",
            &s(&o),
        ]);
        assert!(m.contains("wrote 500 rows"), "{m}");
        let body = std::fs::read(&o).unwrap();
        assert!(body.len() > 500, "{ext} output is {} bytes", body.len());
    }
    assert_eq!(read_parquet(&tmp.path().join("r.parquet")).num_rows(), 500);
    // CSV and NDJSON stream to standard output with `--output -`: the same values as
    // the files, nothing else on the stream.
    let q = "SELECT reclag_score('prod', embedding) AS s FROM mnist";
    for (fmt, file) in [("csv", "r.csv"), ("ndjson", "r.ndjson")] {
        let streamed = cli_ok(&[
            "sql", "--table", &table, "--model", &mref, q, "--format", fmt, "--output", "-",
        ]);
        assert_eq!(
            streamed,
            std::fs::read_to_string(tmp.path().join(file)).unwrap(),
            "{fmt}"
        );
    }
    let e = crate::common::cli_err(&[
        "sql", "--table", &table, "--model", &mref, q, "--output", "-",
    ]);
    assert!(e.contains("--format csv or --format ndjson"), "{e}");
    let e = crate::common::cli_err(&[
        "sql", "--table", &table, "--model", &mref, q, "--format", "parquet", "--output", "-",
    ]);
    assert!(
        e.contains("Parquet cannot stream to standard output"),
        "{e}"
    );
    // The table format prints as the rows arrive, in tables of at most 1,024 rows:
    // the sample's 4,000 training rows give four tables holding every row once.
    let train = format!("train={}", s(&sample[0]));
    let t = cli_ok(&["sql", "--table", &train, "SELECT label FROM train"]);
    let headers = t.lines().filter(|l| l.trim() == "| label |").count();
    let rows = t
        .lines()
        .filter(|l| l.starts_with("| ") && l.trim() != "| label |")
        .count();
    assert_eq!((headers, rows), (4, 4000), "{}", &t[..t.len().min(400)]);
    let empty = cli_ok(&[
        "sql",
        "--table",
        &train,
        "SELECT label FROM train WHERE label < 0",
    ]);
    assert!(empty.contains("| label |"), "{empty}");
    let funcs = cli_ok(&["sql", "SHOW FUNCTIONS LIKE 'reclag%'"]);
    for f in [
        "reclag_score",
        "reclag_energy",
        "reclag_ood_probability",
        "reclag_is_ood",
        "reclag_attractor",
    ] {
        assert!(
            funcs.contains(f),
            "{f} missing from SHOW FUNCTIONS:\n{funcs}"
        );
    }
    assert!(
        funcs.contains("trajectory reaches the origin"),
        "descriptions shown:\n{funcs}"
    );
    let csv = std::fs::read_to_string(tmp.path().join("r.csv")).unwrap();
    assert_eq!(csv.lines().count(), 501);
    let leftovers = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .count();
    assert_eq!(leftovers, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let sample = reclag_pipelines::ops::demo::write_sample(tmp.path()).unwrap();
    let model = tmp.path().join("m.parquet");
    cli_ok(&[
        "train",
        "--input",
        &s(&sample[0]),
        "--label",
        "label",
        "--output",
        &s(&model),
        "--recipe",
        "paper",
        "--epochs",
        "2",
    ]);
    let ctx = ctx_with(&sample[1], &model).await;
    let e = query_err(&ctx, "SELECT reclag_score('prod', embedding) FROM t").await;
    assert!(
        e.contains("model 'prod' is not registered (registered: m)"),
        "{e}"
    );
    let e = query_err(
        &ctx,
        "SELECT reclag_score(CAST(label AS VARCHAR), embedding) FROM t",
    )
    .await;
    assert!(e.contains("must be a string literal"), "{e}");
    let e = query_err(&ctx, "SELECT reclag_score('m', logits) FROM t").await;
    assert!(
        e.contains("column 'logits': expected embedding dimension 128, found 10"),
        "{e}"
    );
    let e = query_err(
        &ctx,
        "SELECT reclag_score('m', embedding, label + 100) FROM t",
    )
    .await;
    assert!(
        e.contains("unknown group") && e.contains("the model knows groups: 0, 1, 2"),
        "{e}"
    );
    // A ragged List column fails at execution, naming the row.
    let mut b = ListBuilder::new(Float32Builder::new());
    for len in [128, 127] {
        b.values().append_slice(&vec![0.1; len]);
        b.append(true);
    }
    let ragged = tmp.path().join("ragged.parquet");
    write_parquet(
        &ragged,
        vec![("v", Arc::new(b.finish()) as arrow_array::ArrayRef)],
    );
    ctx.register_parquet("r", s(&ragged).as_str(), ParquetReadOptions::default())
        .await
        .unwrap();
    let e = query_err(&ctx, "SELECT reclag_score('m', v) FROM r").await;
    assert!(
        e.contains("column 'v': expected embedding dimension 128, found 127 at row 1"),
        "{e}"
    );
    // A model given by path works without registration.
    let by_path = format!(
        "SELECT count(*) FROM t WHERE reclag_score('{}', embedding) > 0",
        s(&model)
    );
    let n = query(&ctx, &by_path).await;
    assert_eq!(n.num_rows(), 1);
}

/// A plan that uses the reclag functions is serialized with datafusion-proto, the way
/// Ballista ships it, and decoded in a fresh session that has neither the functions
/// nor the models registered. The decoded plan (logical and physical) gives the same
/// rows; a model file changed after planning is refused when the plan is decoded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serialized_plans_pin_models_by_url_and_checksum() {
    use datafusion::physical_plan::collect;
    use datafusion_proto::bytes::{
        logical_plan_from_bytes_with_extension_codec, logical_plan_to_bytes_with_extension_codec,
        physical_plan_from_bytes_with_extension_codec, physical_plan_to_bytes_with_extension_codec,
    };
    use reclag_pipelines::ops::sql::{SqlJob, model_registry, session};
    use reclag_pipelines::store::Stores;
    use reclag_udfs::ReclagCodec;

    let tmp = tempfile::tempdir().unwrap();
    let sample = reclag_pipelines::ops::demo::write_sample(tmp.path()).unwrap();
    let model = tmp.path().join("m.parquet");
    let other = tmp.path().join("other.parquet");
    for (out, epochs) in [(&model, 5), (&other, 2)] {
        train_model(&sample[0], out, epochs);
    }
    let stores = Arc::new(Stores::default());
    let job = SqlJob::new(stores.clone(), "")
        .tables(vec![("t".into(), s(&sample[1]))])
        .models(vec![("prod".into(), s(&model))]);
    let ctx = session(&job).await.unwrap();
    // A registered name (group mode), a path literal (union mode) and a struct field.
    let sql = format!(
        "SELECT reclag_score('prod', embedding, label) AS s, \
                reclag_is_ood('{}', embedding) AS o, \
                reclag_explain('prod', embedding)['nearest_memory'] AS nm \
         FROM t ORDER BY s, o, nm",
        s(&model)
    );
    let df = ctx.sql(&sql).await.unwrap();
    let logical = df.logical_plan().clone();
    let physical = df.clone().create_physical_plan().await.unwrap();
    let expected = df.collect().await.unwrap();
    let expected = arrow_select::concat::concat_batches(&expected[0].schema(), &expected).unwrap();
    assert_eq!(expected.num_rows(), 1000);
    let ood = arrow_array::cast::AsArray::as_boolean(expected.column(1)).true_count();
    assert!(ood > 0 && ood < 1000, "a mix of ID and OOD rows: {ood}");

    let encoder = ReclagCodec::new(reclag_udfs::ModelRegistry::new());
    let lbytes = logical_plan_to_bytes_with_extension_codec(&logical, &encoder).unwrap();
    let pbytes = physical_plan_to_bytes_with_extension_codec(physical, &encoder).unwrap();

    // The executing side: a bare session, and a registry that loads through object_store.
    let fresh = || {
        let ctx = SessionContext::new();
        let codec = ReclagCodec::new(model_registry(stores.clone()));
        (ctx, codec)
    };
    let concat =
        |b: Vec<RecordBatch>| arrow_select::concat::concat_batches(&b[0].schema(), &b).unwrap();

    let (ctx2, codec2) = fresh();
    assert!(
        ctx2.sql(&sql).await.is_err(),
        "the fresh session knows no table or function"
    );
    let decoded =
        logical_plan_from_bytes_with_extension_codec(&lbytes, &ctx2.task_ctx(), &codec2).unwrap();
    let got = concat(
        ctx2.execute_logical_plan(decoded.clone())
            .await
            .unwrap()
            .collect()
            .await
            .unwrap(),
    );
    assert_eq!(got, expected, "logical plan round trip");
    // Both keys were pinned by the file's absolute URL and checksum, and the decoded
    // plan carries the same pins: encoded again, it gives the same bytes.
    let sha = reclag::format::checksum(&reclag::format::load(&model).unwrap());
    let url = url_of(&model);
    let payload = String::from_utf8_lossy(&lbytes).into_owned();
    for key in [s(&model), "prod".to_string()] {
        let pin = format!(r#"{{"key":"{key}","sha256":"{sha}","url":"{url}"}}"#);
        assert!(payload.contains(&pin), "{pin} in {payload}");
    }
    assert_eq!(
        logical_plan_to_bytes_with_extension_codec(&decoded, &encoder).unwrap(),
        lbytes
    );

    let (ctx3, codec3) = fresh();
    let plan =
        physical_plan_from_bytes_with_extension_codec(&pbytes, &ctx3.task_ctx(), &codec3).unwrap();
    let got = concat(collect(plan, ctx3.task_ctx()).await.unwrap());
    assert_eq!(got, expected, "physical plan round trip");

    // A decoder that shares models among decoded plans (a cluster executor's), with
    // a plan decoded before the change still alive.
    let sharing = ReclagCodec::new(model_registry(stores.clone())).sharing_models();
    let held =
        logical_plan_from_bytes_with_extension_codec(&lbytes, &ctx2.task_ctx(), &sharing).unwrap();

    // The model file changes after planning: decoding refuses the plan, naming the
    // model, its URL and both checksums. In a long-running decoder (codec2, as on a
    // cluster scheduler), a plan decoded before the change still scores with the
    // model it pinned, the old plan is refused, and a plan made after the change
    // decodes with the new model. The sharing decoder serves the old plan from the
    // model its live plan holds, and refuses it once that plan is gone.
    std::fs::copy(&other, &model).unwrap();
    let other_sha = reclag::format::checksum(&reclag::format::load(&other).unwrap());
    assert_ne!(sha, other_sha);
    let (ctx4, codec4) = fresh();
    let refused = |codec: &ReclagCodec| {
        let e = logical_plan_from_bytes_with_extension_codec(&lbytes, &ctx4.task_ctx(), codec)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&url)
                && e.contains(&sha)
                && e.contains(&other_sha)
                && e.contains("changed after the plan was made"),
            "{e}"
        );
    };
    refused(&codec4);
    let e = physical_plan_from_bytes_with_extension_codec(&pbytes, &ctx4.task_ctx(), &codec4)
        .unwrap_err()
        .to_string();
    assert!(e.contains("changed after the plan was made"), "{e}");
    let old = concat(
        ctx2.execute_logical_plan(decoded)
            .await
            .unwrap()
            .collect()
            .await
            .unwrap(),
    );
    assert_eq!(
        old, expected,
        "a plan decoded before the change keeps its model"
    );
    refused(&codec2);
    logical_plan_from_bytes_with_extension_codec(&lbytes, &ctx2.task_ctx(), &sharing).unwrap();
    drop(held);
    refused(&sharing);
    let replanned = session(&job).await.unwrap().sql(&sql).await.unwrap();
    let new_bytes =
        logical_plan_to_bytes_with_extension_codec(replanned.logical_plan(), &encoder).unwrap();
    let new_expected = concat(replanned.collect().await.unwrap());
    assert_ne!(new_expected, expected, "the other model scores differently");
    let plan = logical_plan_from_bytes_with_extension_codec(&new_bytes, &ctx2.task_ctx(), &codec2)
        .unwrap();
    let got = concat(
        ctx2.execute_logical_plan(plan)
            .await
            .unwrap()
            .collect()
            .await
            .unwrap(),
    );
    assert_eq!(got, new_expected, "the same decoder picks up the new model");

    // The model file is gone: the error names the pinned model and the file.
    std::fs::remove_file(&model).unwrap();
    let (ctx5, codec5) = fresh();
    let e = logical_plan_from_bytes_with_extension_codec(&lbytes, &ctx5.task_ctx(), &codec5)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("pinned by the plan") && e.contains("m.parquet"),
        "{e}"
    );
}

fn url_of(p: &Path) -> String {
    url::Url::from_file_path(p).unwrap().to_string()
}

/// `reclag sql` scans embedding columns of a plain file or glob with the fast list
/// reader (`fast_table`). Every query gives what DataFusion's own Parquet scan gives
/// (a session without the swap): strings come back as DataFusion types them, a
/// second list column, columns out of file order, a filter the scan must not drop, and
/// LIMIT. `EXPLAIN` shows which scan ran: a query that reads no embedding, and a hive
/// lake, keep DataFusion's (its footer statistics and partition pruning). A file whose
/// pages are zeroed fails with its name.
#[test]
fn fast_scans_equal_datafusions_parquet_scan() {
    use reclag_pipelines::ops::sql::{SqlJob, session};
    use reclag_pipelines::store::Stores;
    let tmp = tempfile::tempdir().unwrap();
    let sample = reclag_pipelines::ops::demo::write_sample(tmp.path()).unwrap();
    let model = tmp.path().join("m.parquet");
    train_model(&sample[0], &model, 3);
    let flat = tmp.path().join("flat");
    let hive = tmp.path().join("hive/date=2026-12-01");
    for d in [&flat, &hive] {
        std::fs::create_dir_all(d).unwrap();
    }
    // The sample's rows with a string column (DataFusion reads it as `Utf8View`),
    // in 128-row row groups.
    let named = |src: &Path, dst: &Path| {
        let b = read_parquet(src);
        let labels = arrow_array::cast::AsArray::as_primitive::<arrow_array::types::Int64Type>(
            b.column_by_name("label").unwrap(),
        );
        let names: arrow_array::StringArray = labels
            .iter()
            .map(|l| l.map(|l| format!("class-{l}")))
            .collect();
        let field = arrow_schema::Field::new("label_name", arrow_schema::DataType::Utf8, true);
        let b = crate::common::with_column(&b, field, Arc::new(names));
        crate::common::write_row_groups(dst, &b, 128);
    };
    for (i, f) in [&sample[1], &sample[2]].iter().enumerate() {
        named(f, &flat.join(format!("part-{i}.parquet")));
    }
    named(&sample[2], &hive.join("part-0.parquet"));
    let hive2 = tmp.path().join("hive/date=2026-12-02");
    std::fs::create_dir_all(&hive2).unwrap();
    named(&sample[1], &hive2.join("part-0.parquet"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let job = |table: &str, query: &str| {
        SqlJob::new(Arc::new(Stores::default()), query)
            .tables(vec![("t".into(), table.into())])
            .models(vec![("prod".into(), s(&model))])
    };
    let fast = |table: &str, query: &str| rt.block_on(job(table, query).run());
    let reference = |table: &str, query: &str| -> String {
        rt.block_on(async {
            let ctx = session(&job(table, query)).await.unwrap();
            let b = ctx.sql(query).await.unwrap().collect().await.unwrap();
            // `reclag sql` prints tables of at most TABLE_ROWS rows as they arrive.
            let all = arrow_select::concat::concat_batches(&b[0].schema(), &b).unwrap();
            let step = reclag_pipelines::ops::sql::TABLE_ROWS;
            (0..all.num_rows().max(1))
                .step_by(step)
                .map(|at| {
                    let part = all.slice(at, step.min(all.num_rows() - at));
                    format!(
                        "{}\n",
                        datafusion::arrow::util::pretty::pretty_format_batches(&[part]).unwrap()
                    )
                })
                .collect::<String>()
        })
    };
    let glob = format!("{}/*.parquet", s(&flat));
    let single = s(&flat.join("part-1.parquet"));
    let hive_root = s(&tmp.path().join("hive"));
    let queries = [
        "SELECT label_name, logits[2] AS l2, reclag_score('prod', embedding, label) AS s \
         FROM t ORDER BY s, label_name, l2",
        "SELECT count(*) AS n, sum(CASE WHEN reclag_is_ood('prod', embedding) THEN 1 ELSE 0 END) AS ood \
         FROM t WHERE label_name <> 'class-1'",
        "SELECT embedding[3] AS e3, label FROM t WHERE embedding[3] > 0 ORDER BY e3, label LIMIT 7",
        "SELECT count(*) AS n FROM t",
    ];
    for table in [&glob, &single, &hive_root] {
        for q in queries {
            let got = fast(table, q).unwrap();
            assert_eq!(got, reference(table, q), "{table}: {q}");
            assert!(got.lines().count() > 4, "{table}: {q}: rows:\n{got}");
            let plan = fast(table, &format!("EXPLAIN {q}")).unwrap();
            let streamed = plan.contains("StreamingTableExec");
            assert_eq!(streamed, q.contains("embedding"), "{table}: {q}:\n{plan}");
        }
    }
    // Zeroed pages: an error naming the file, never a panic or a partial answer.
    let zeroed = |src: &Path, dst: &Path| {
        let mut bytes = std::fs::read(src).unwrap();
        let n = bytes.len();
        let footer = u32::from_le_bytes(bytes[n - 8..n - 4].try_into().unwrap()) as usize;
        bytes[4..n - 8 - footer].fill(0);
        std::fs::write(dst, bytes).unwrap();
    };
    let bad = tmp.path().join("bad.parquet");
    zeroed(&flat.join("part-1.parquet"), &bad);
    let e = fast(&s(&bad), queries[1]).unwrap_err().to_string();
    assert!(e.contains("bad.parquet"), "{e}");

    // In the hive lake, the partition column comes from each file's path, and a
    // partition the filter rules out is never read: a third one, whose pages are
    // zeroed, fails only the query that reads it.
    let hive3 = tmp.path().join("hive/date=2026-12-03");
    std::fs::create_dir_all(&hive3).unwrap();
    // The footer stays readable, so the table registers and lists the partition.
    crate::common::zero_column_chunks(&hive.join("part-0.parquet"), &hive3.join("part-0.parquet"));
    let by_date = "SELECT date, count(*) AS n, \
         sum(CASE WHEN reclag_is_ood('prod', embedding, label) THEN 1 ELSE 0 END) AS ood, \
         min(embedding[1]) AS e1 FROM t WHERE date <> '2026-12-03' GROUP BY date ORDER BY date";
    let one_day = "SELECT label_name, date, reclag_score('prod', embedding, label) AS s \
         FROM t WHERE date = '2026-12-02' ORDER BY s, label_name";
    for q in [by_date, one_day] {
        let got = fast(&hive_root, q).unwrap();
        assert_eq!(got, reference(&hive_root, q), "{q}");
        let plan = fast(&hive_root, &format!("EXPLAIN {q}")).unwrap();
        assert!(plan.contains("StreamingTableExec"), "{q}:\n{plan}");
    }
    let got = fast(&hive_root, by_date).unwrap();
    assert!(
        got.contains("2026-12-01") && got.contains("2026-12-02") && !got.contains("2026-12-03"),
        "{got}"
    );
    let all_days = "SELECT count(*) FROM t WHERE reclag_is_ood('prod', embedding, label)";
    let e = fast(&hive_root, all_days).unwrap_err().to_string();
    assert!(e.contains("date=2026-12-03"), "{e}");
}
