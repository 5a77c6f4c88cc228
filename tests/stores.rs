//! Object storage end to end against real servers started on loopback: moto (S3),
//! Azurite (Azure Blob Storage) and, for `gs://`, GCS's XML API on moto plus
//! fake-gcs-server for reads (see `tests/emulators.rs`). On each: train from the store, score store → store, `reclag filter` and SQL over a
//! hive-partitioned lake there; and the failures users hit (a missing object, a
//! foreign object, missing credentials).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{ArrayRef, Int64Array};
use reclag_pipelines::store::{StoreEnv, Stores};
use reclag_pipelines::upload::PART_BYTES;

use crate::common::{clusters, fsl, read_parquet, write_parquet};
use crate::emulators::{Emulator, Fault, FaultProxy, Kind, Rule, open_uploads};

fn cli_env(env: &StoreEnv, args: &[&str]) -> Result<String, String> {
    let mut out = Vec::new();
    let mut full = vec!["reclag"];
    full.extend_from_slice(args);
    match reclag_pipelines::cli::run_with(full, env.clone(), &mut out) {
        Ok(_) => Ok(String::from_utf8(out).unwrap()),
        Err(e) => Err(e.to_string()),
    }
}

#[track_caller]
fn ok(env: &StoreEnv, args: &[&str]) -> String {
    cli_env(env, args).unwrap_or_else(|e| panic!("reclag {} failed: {e}", args.join(" ")))
}

#[track_caller]
fn err(env: &StoreEnv, args: &[&str]) -> String {
    match cli_env(env, args) {
        Ok(o) => panic!("reclag {} should fail but printed {o}", args.join(" ")),
        Err(e) => e,
    }
}

pub(crate) fn upload(stores: &Stores, url: &str, local: &Path) {
    stores
        .locate(url)
        .unwrap()
        .put(std::fs::read(local).unwrap().into())
        .unwrap();
}

pub(crate) fn download(stores: &Stores, url: &str, local: &Path) {
    let bytes = stores.locate(url).unwrap().get().unwrap();
    std::fs::write(local, &bytes).unwrap();
}

fn table(
    rows: &[Option<Vec<f32>>],
    labels: &[i64],
    ids: std::ops::Range<i64>,
) -> Vec<(&'static str, ArrayRef)> {
    table_d(rows, labels, ids, 8)
}

#[test]
fn s3_train_score_and_sql_over_a_hive_lake() {
    end_to_end(Kind::S3);
}

#[test]
fn azure_train_score_and_sql_over_a_hive_lake() {
    end_to_end(Kind::Azure);
}

/// Google Cloud Storage's XML API served from moto by `tests/gcs_on_moto.py` (no GCS
/// emulator installable here takes object_store's writes; see `tests/emulators.rs`).
#[test]
fn gcs_train_score_and_sql_over_a_hive_lake() {
    end_to_end(Kind::Gcs);
}

/// Train from the store, score store → store over a glob (equal to scoring the same
/// files locally), `reclag filter` and SQL over a hive lake there, results written back.
fn end_to_end(kind: Kind) {
    let Some(emu) = Emulator::start(kind) else {
        return;
    };
    emu.bucket("lake");
    let env = emu.env();
    let u = |rest: &str| emu.url(rest);
    let stores = Stores::new(env.clone());
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();

    // Two training parts under a prefix.
    let (rows, labels) = clusters(3, 80, 8, 7);
    for (i, (r, l)) in rows.chunks(120).zip(labels.chunks(120)).enumerate() {
        let p = t.join(format!("train-{i}.parquet"));
        let lo = (i * 120) as i64;
        write_parquet(&p, table(r, l, lo..lo + r.len() as i64));
        upload(&stores, &u(&format!("lake/train/part-{i}.parquet")), &p);
    }
    let msg = ok(
        &env,
        &[
            "train",
            "--input",
            &u("lake/train/"),
            "--label",
            "label",
            "--recipe",
            "paper",
            "--epochs",
            "5",
            "--output",
            &u("lake/models/m.parquet"),
        ],
    );
    assert!(msg.contains("trained 3 group(s), d=8"), "{msg}");
    let info = ok(&env, &["inspect", &u("lake/models/m.parquet")]);
    assert!(info.contains("dimension      8"), "{info}");

    // The same data trained locally gives the same model content (only the recorded
    // source differs), so the store reader saw exactly the same rows.
    let local_train = t.join("train-all.parquet");
    write_parquet(&local_train, table(&rows, &labels, 0..240));
    ok(
        &env,
        &[
            "train",
            "--input",
            &local_train.display().to_string(),
            "--label",
            "label",
            "--recipe",
            "paper",
            "--epochs",
            "5",
            "--output",
            &t.join("local-model.parquet").display().to_string(),
        ],
    );
    let remote_model = t.join("remote-model.parquet");
    download(&stores, &u("lake/models/m.parquet"), &remote_model);
    let a = reclag::format::load(&remote_model).unwrap();
    let b = reclag::format::load(&t.join("local-model.parquet")).unwrap();
    for (ga, gb) in a.groups().iter().zip(b.groups()) {
        assert_eq!(ga.xi, gb.xi);
        assert_eq!(ga.tau, gb.tau);
    }

    // A hive-partitioned lake of new rows, including far-away (OOD) ones.
    let (new_rows, new_labels) = clusters(3, 40, 8, 99);
    let far: Vec<Option<Vec<f32>>> = (0..30)
        .map(|i| {
            Some(
                (0..8)
                    .map(|j| if j == i % 8 { -40.0 } else { 3.0 })
                    .collect(),
            )
        })
        .collect();
    let days = ["2026-11-01", "2026-11-02"];
    for (k, day) in days.iter().enumerate() {
        let mut r: Vec<Option<Vec<f32>>> = new_rows[k * 60..(k + 1) * 60].to_vec();
        let mut l: Vec<i64> = new_labels[k * 60..(k + 1) * 60].to_vec();
        r.extend(far[k * 15..(k + 1) * 15].iter().cloned());
        l.extend(std::iter::repeat_n(0, 15));
        let lo = (k * 1000) as i64;
        let p = t.join(format!("day{k}.parquet"));
        write_parquet(&p, table(&r, &l, lo..lo + 75));
        upload(
            &stores,
            &u(&format!("lake/events/day={day}/part-0.parquet")),
            &p,
        );
    }

    // score store → store over a glob, then compare with scoring the same files locally.
    let msg = ok(
        &env,
        &[
            "score",
            "--model",
            &u("lake/models/m.parquet"),
            "--input",
            &u("lake/events/day=*/*.parquet"),
            "--output",
            &u("lake/scored/all.parquet"),
            "--group",
            "label",
        ],
    );
    assert!(msg.contains("scored 150 rows"), "{msg}");
    let scored = t.join("scored.parquet");
    download(&stores, &u("lake/scored/all.parquet"), &scored);
    let local_out = t.join("local-scored.parquet");
    ok(
        &env,
        &[
            "score",
            "--model",
            &remote_model.display().to_string(),
            "--input",
            &t.join("day0.parquet").display().to_string(),
            &t.join("day1.parquet").display().to_string(),
            "--output",
            &local_out.display().to_string(),
            "--group",
            "label",
        ],
    );
    let (r, l) = (read_parquet(&scored), read_parquet(&local_out));
    assert_eq!(r.num_rows(), 150);
    assert_eq!(r, l, "store → store scoring differs from local scoring");
    let is_ood = r.column_by_name("reclag_is_ood").unwrap().as_boolean();
    let ids = r.column_by_name("id").unwrap().as_primitive::<Int64Type>();
    let ood_per_day = |day: usize| {
        (0..r.num_rows())
            .filter(|&i| is_ood.value(i) && (ids.value(i) / 1000) as usize == day)
            .count() as i64
    };
    assert!(
        ood_per_day(0) >= 15 && ood_per_day(1) >= 15,
        "far rows are OOD"
    );

    // `reclag filter` reads the same objects: it quarantines exactly the rows `score`
    // flagged, with every column.
    let quarantine = t.join("quarantine.parquet");
    let msg = ok(
        &env,
        &[
            "filter",
            "--model",
            &u("lake/models/m.parquet"),
            "--input",
            &u("lake/events/day=*/*.parquet"),
            "--group",
            "label",
            "--keep",
            "ood",
            "--output",
            &quarantine.display().to_string(),
        ],
    );
    let flagged: Vec<i64> = (0..r.num_rows())
        .filter(|&i| is_ood.value(i))
        .map(|i| ids.value(i))
        .collect();
    assert!(
        msg.contains(&format!("kept {} of 150 rows", flagged.len())),
        "{msg}"
    );
    let q = read_parquet(&quarantine);
    let q_ids = q.column_by_name("id").unwrap().as_primitive::<Int64Type>();
    assert_eq!(q_ids.values().to_vec(), flagged);
    assert_eq!(q.num_columns(), 3, "id, embedding and label kept");

    // SQL over the hive lake: `day` becomes a column, and the per-day OOD counts equal
    // what `reclag score` wrote.
    let q = "SELECT CAST(day AS VARCHAR) AS day, count(*) AS n FROM events \
             WHERE reclag_is_ood('prod', embedding, label) GROUP BY day ORDER BY day";
    let res = t.join("per-day.parquet");
    ok(
        &env,
        &[
            "sql",
            q,
            "--table",
            &format!("events={}", u("lake/events/")),
            "--model",
            &format!("prod={}", u("lake/models/m.parquet")),
            "--output",
            &res.display().to_string(),
        ],
    );
    // The hive lake in the store takes the fast list reader: the listing's object keys
    // match the files the table was registered with.
    let plan = ok(
        &env,
        &[
            "sql",
            &format!("EXPLAIN {q}"),
            "--table",
            &format!("events={}", u("lake/events/")),
            "--model",
            &format!("prod={}", u("lake/models/m.parquet")),
        ],
    );
    assert!(plan.contains("StreamingTableExec"), "{plan}");
    let b = read_parquet(&res);
    let n = b.column(1).as_primitive::<Int64Type>();
    assert_eq!(b.num_rows(), 2);
    for (k, want) in days.iter().enumerate() {
        let day = datafusion::arrow::util::display::array_value_to_string(b.column(0), k).unwrap();
        assert_eq!(&day, want);
        assert_eq!(n.value(k), ood_per_day(k), "day {want}");
    }
    // A glob table, a model URL inside the query, and a result written to the store.
    let q2 = format!(
        "SELECT count(*) AS n FROM ev WHERE reclag_is_ood('{}', embedding, label)",
        u("lake/models/m.parquet")
    );
    ok(
        &env,
        &[
            "sql",
            &q2,
            "--table",
            &format!("ev={}", u("lake/events/day=*/part-*.parquet")),
            "--output",
            &u("lake/results/n.parquet"),
        ],
    );
    let res2 = t.join("n.parquet");
    download(&stores, &u("lake/results/n.parquet"), &res2);
    let b2 = read_parquet(&res2);
    assert_eq!(
        b2.column(0).as_primitive::<Int64Type>().value(0),
        ood_per_day(0) + ood_per_day(1)
    );
    // One object as a table: its embedding scan takes the fast list reader, from the store.
    let one = format!(
        "ev={}",
        u(&format!("lake/events/day={}/part-0.parquet", days[0]))
    );
    let q3 = "SELECT count(*) AS n FROM ev WHERE reclag_is_ood('prod', embedding, label)";
    let model = &format!("prod={}", u("lake/models/m.parquet"));
    let plan = ok(
        &env,
        &[
            "sql",
            &format!("EXPLAIN {q3}"),
            "--table",
            &one,
            "--model",
            model,
        ],
    );
    assert!(plan.contains("StreamingTableExec"), "{plan}");
    let res3 = t.join("one.parquet");
    let out3 = res3.display().to_string();
    ok(
        &env,
        &[
            "sql", q3, "--table", &one, "--model", model, "--output", &out3,
        ],
    );
    let b3 = read_parquet(&res3);
    assert_eq!(
        b3.column(0).as_primitive::<Int64Type>().value(0),
        ood_per_day(0)
    );
}

#[test]
fn s3_failures_are_clear() {
    let Some(moto) = Emulator::start(Kind::S3) else {
        return;
    };
    moto.bucket("bkt");
    let env = moto.env();
    let stores = Stores::new(env.clone());
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o.parquet").display().to_string();

    // A model URL with nothing behind it.
    let e = err(&env, &["inspect", "s3://bkt/models/missing.parquet"]);
    assert!(
        e.contains("s3://bkt/models/missing.parquet") && e.contains("does not exist"),
        "{e}"
    );
    // An input prefix with nothing below it.
    let (rows, labels) = clusters(2, 30, 8, 1);
    let p = tmp.path().join("t.parquet");
    write_parquet(&p, table(&rows, &labels, 0..60));
    upload(&stores, "s3://bkt/t.parquet", &p);
    ok(
        &env,
        &[
            "train",
            "--input",
            "s3://bkt/t.parquet",
            "--recipe",
            "paper",
            "--epochs",
            "2",
            "--output",
            "s3://bkt/m.parquet",
        ],
    );
    let e = err(
        &env,
        &[
            "score",
            "--model",
            "s3://bkt/m.parquet",
            "--input",
            "s3://bkt/nothing/",
            "--output",
            &out,
        ],
    );
    assert!(
        e.contains("s3://bkt/nothing/") && e.contains("does not exist"),
        "{e}"
    );
    // An object that is not Parquet.
    stores
        .locate("s3://bkt/junk.parquet")
        .unwrap()
        .put(bytes::Bytes::from_static(b"definitely not parquet"))
        .unwrap();
    let e = err(
        &env,
        &[
            "score",
            "--model",
            "s3://bkt/m.parquet",
            "--input",
            "s3://bkt/junk.parquet",
            "--output",
            &out,
        ],
    );
    assert!(e.contains("s3://bkt/junk.parquet"), "{e}");
    let e = err(&env, &["inspect", "s3://bkt/junk.parquet"]);
    assert!(
        e.contains("s3://bkt/junk.parquet") && e.contains("not a readable Parquet file"),
        "{e}"
    );
    // A bucket that does not exist.
    let e = err(&env, &["inspect", "s3://no-such-bucket/m.parquet"]);
    assert!(e.contains("s3://no-such-bucket/m.parquet"), "{e}");
    // An unreachable endpoint fails with the URL named (not a hang, not a panic).
    let dead = StoreEnv::from_vars([
        ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
        ("AWS_SECRET_ACCESS_KEY", "moto-secret-do-not-print"),
        ("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9"),
        ("AWS_MAX_RETRIES", "0"),
    ]);
    let e = err(&dead, &["inspect", "s3://bkt/m.parquet"]);
    assert!(e.contains("s3://bkt/m.parquet"), "{e}");
    assert!(
        !e.contains("moto-secret-do-not-print"),
        "secret printed: {e}"
    );

    // Missing credentials: a clear message naming the variables, no secret printed.
    let no_creds = StoreEnv::from_vars([("AWS_ENDPOINT_URL_S3", moto.endpoint.as_str())]);
    let e = err(
        &no_creds,
        &[
            "score",
            "--model",
            "s3://bkt/m.parquet",
            "--input",
            "s3://bkt/t.parquet",
            "--output",
            &out,
        ],
    );
    assert!(e.contains("no S3 credentials for s3://bkt/"), "{e}");
    assert!(
        e.contains("AWS_ACCESS_KEY_ID") && e.contains("AWS_SECRET_ACCESS_KEY"),
        "{e}"
    );
    let half = StoreEnv::from_vars([
        ("AWS_SECRET_ACCESS_KEY", "moto-secret-do-not-print"),
        ("AWS_ENDPOINT_URL_S3", moto.endpoint.as_str()),
    ]);
    let e = err(
        &half,
        &["sql", "SELECT 1", "--table", "t=s3://bkt/t.parquet"],
    );
    assert!(e.contains("AWS_ACCESS_KEY_ID is not"), "{e}");
    assert!(
        !e.contains("moto-secret-do-not-print"),
        "secret printed: {e}"
    );
    // A timeout or retry count that does not parse is named, with the form to use.
    for (var, value, says) in [
        ("RECLAG_STORE_TIMEOUT", "soon", "is not a duration"),
        ("RECLAG_STORE_RETRIES", "many", "is not a count"),
    ] {
        let mut vars: Vec<(String, String)> = env
            .vars()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        vars.push((var.into(), value.into()));
        let e = err(
            &StoreEnv::from_vars(vars),
            &["inspect", "s3://bkt/m.parquet"],
        );
        assert!(e.contains(&format!("{var}='{value}' {says}")), "{e}");
    }
    let help = ok(&env, &["--help"]);
    for v in [
        "AWS_ACCESS_KEY_ID",
        "AWS_ENDPOINT_URL_S3",
        "GOOGLE_SERVICE_ACCOUNT",
        "AZURE_STORAGE_ACCOUNT_NAME",
        "RECLAG_STORE_TIMEOUT",
        "RECLAG_STORE_RETRIES",
    ] {
        assert!(help.contains(v), "--help does not name {v}");
    }
}

/// A moto server holding a model trained on 64-d clusters and a two-file lake of their
/// rows, large enough (60k rows with their embeddings kept: about 15 MB) that a
/// scored output is a multipart upload.
struct BigLake {
    emu: Emulator,
    tmp: tempfile::TempDir,
    model: String,
    input: String,
    stores: Stores,
}

fn big_lake_on_s3() -> Option<BigLake> {
    let emu = Emulator::start(Kind::S3)?;
    emu.bucket("lake");
    let tmp = tempfile::tempdir().unwrap();
    let model = big_lake(&emu, tmp.path());
    Some(BigLake {
        input: emu.url("lake/events/"),
        stores: Stores::new(emu.env()),
        emu,
        tmp,
        model,
    })
}

fn big_lake(emu: &Emulator, t: &Path) -> String {
    let stores = Stores::new(emu.env());
    let (rows, labels) = clusters(3, 80, 64, 3);
    let train = t.join("train.parquet");
    write_parquet(&train, table_d(&rows, &labels, 0..240, 64));
    let model = t.join("m.parquet");
    crate::common::train_model(&train, &model, 2);
    upload(&stores, &emu.url("lake/models/m.parquet"), &model);
    // The same centres as the training rows: mostly ID, as a real day would be.
    let (rows, labels) = clusters(3, 20_000, 64, 3);
    for (i, (r, l)) in rows.chunks(30_000).zip(labels.chunks(30_000)).enumerate() {
        let p = t.join(format!("ev{i}.parquet"));
        let lo = (i * 30_000) as i64;
        write_parquet(&p, table_d(r, l, lo..lo + r.len() as i64, 64));
        upload(
            &stores,
            &emu.url(&format!("lake/events/day={i}/part-0.parquet")),
            &p,
        );
    }
    emu.url("lake/models/m.parquet")
}

fn table_d(
    rows: &[Option<Vec<f32>>],
    labels: &[i64],
    ids: std::ops::Range<i64>,
    d: i32,
) -> Vec<(&'static str, ArrayRef)> {
    vec![
        (
            "id",
            Arc::new(Int64Array::from_iter_values(ids)) as ArrayRef,
        ),
        ("embedding", fsl(rows, d)),
        (
            "label",
            Arc::new(Int64Array::from(labels.to_vec())) as ArrayRef,
        ),
    ]
}

fn score_args<'a>(model: &'a str, input: &'a str, output: &'a str) -> Vec<&'a str> {
    vec![
        "score", "--model", model, "--input", input, "--output", output, "--group", "label",
    ]
}

/// 503s, a connection reset and a request that hangs past `RECLAG_STORE_TIMEOUT`, on
/// reads, on the multipart upload's start, one part and its completion: the run
/// retries through all of them and writes the same bytes as a run without faults.
#[test]
fn transient_store_faults_are_retried_to_the_same_bytes() {
    let Some(BigLake {
        emu,
        tmp: _tmp,
        model,
        input,
        stores,
    }) = big_lake_on_s3()
    else {
        return;
    };

    let clean_url = emu.url("lake/out/clean.parquet");
    let clean = ok(&emu.env(), &score_args(&model, &input, &clean_url));
    let proxy = FaultProxy::start(
        &emu,
        vec![
            Rule::new(
                "GET",
                "/lake/models/",
                Fault::Stall(Duration::from_secs(3)),
                1,
            ),
            Rule::new("GET", "/lake/events/day=1/", Fault::Reset, 1),
            Rule::new("GET", "/lake/events/", Fault::Status(503), 2),
            Rule::new("HEAD", "", Fault::Status(500), 1),
            Rule::new("POST", "?uploads", Fault::Status(503), 1),
            Rule::new("PUT", "partNumber=1", Fault::Status(503), 1),
            Rule::new("POST", "uploadId=", Fault::Status(503), 1),
        ],
    );
    let env = proxy.env(&emu, &[("RECLAG_STORE_TIMEOUT", "1s")]);
    let faulty_url = emu.url("lake/out/faulty.parquet");
    let faulty = ok(&env, &score_args(&model, &input, &faulty_url));
    assert!(
        proxy.unused().is_empty(),
        "faults never injected: {:?}",
        proxy.unused()
    );
    assert_eq!(
        clean.replace("clean", "X"),
        faulty.replace("faulty", "X"),
        "summaries differ"
    );
    let a = stores.locate(&clean_url).unwrap().get().unwrap();
    let b = stores.locate(&faulty_url).unwrap().get().unwrap();
    assert!(
        a.len() > PART_BYTES,
        "{} bytes: not a multipart output",
        a.len()
    );
    assert!(
        a == b,
        "a run through faults wrote other bytes than a clean run"
    );
    eprintln!("injected: {:#?}", proxy.injected.lock().unwrap());
}

/// A 403 on one input object fails the run naming that object, and nothing is
/// published; a 403 on one part of the output's multipart upload fails the run, and
/// the upload is aborted (the store holds no open upload) and nothing is published.
#[test]
fn a_forbidden_object_fails_naming_it_and_publishes_nothing() {
    let Some(BigLake {
        emu,
        tmp,
        model,
        input,
        stores,
    }) = big_lake_on_s3()
    else {
        return;
    };

    let proxy = FaultProxy::start(
        &emu,
        vec![Rule::new(
            "GET",
            "/lake/events/day=1/",
            Fault::Status(403),
            usize::MAX,
        )],
    );
    let out = emu.url("lake/out/o.parquet");
    let e = err(&proxy.env(&emu, &[]), &score_args(&model, &input, &out));
    assert!(
        e.contains(&emu.url("lake/events/day=1/part-0.parquet")),
        "{e}"
    );
    assert!(e.contains("403"), "{e}");
    assert!(stores.locate(&out).unwrap().head().unwrap().is_none());
    let local = tmp.path().join("o.parquet");
    let e = err(
        &proxy.env(&emu, &[]),
        &score_args(&model, &input, &local.display().to_string()),
    );
    assert!(e.contains("day=1/part-0.parquet"), "{e}");
    assert!(!local.exists());

    assert_eq!(open_uploads(&emu, "lake"), 0);
    let proxy = FaultProxy::start(
        &emu,
        vec![Rule::new(
            "PUT",
            "partNumber=1",
            Fault::Status(403),
            usize::MAX,
        )],
    );
    let e = err(&proxy.env(&emu, &[]), &score_args(&model, &input, &out));
    assert!(e.contains(&out) && e.contains("403"), "{e}");
    assert!(
        !proxy.injected.lock().unwrap().is_empty(),
        "no part was refused"
    );
    assert!(stores.locate(&out).unwrap().head().unwrap().is_none());
    assert_eq!(
        open_uploads(&emu, "lake"),
        0,
        "the failed multipart upload was not aborted"
    );
}

/// `gs://` reads against fake-gcs-server itself (its buckets loaded from a folder; it
/// takes no XML-API writes, see `tests/emulators.rs`): training from a prefix, scoring
/// a glob, SQL over the hive lake and `reclag filter` give what the same commands give
/// over the same files on disk.
#[test]
fn gcs_reads_from_fake_gcs_server() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let lake = t.join("data/lake");
    let (rows, labels) = clusters(3, 80, 8, 7);
    std::fs::create_dir_all(lake.join("train")).unwrap();
    for (i, (r, l)) in rows.chunks(120).zip(labels.chunks(120)).enumerate() {
        let lo = (i * 120) as i64;
        write_parquet(
            &lake.join(format!("train/part-{i}.parquet")),
            table(r, l, lo..lo + r.len() as i64),
        );
    }
    // Day 1 from the training clusters (in distribution), day 2 from others.
    for (k, (day, seed)) in [("2026-11-01", 7), ("2026-11-02", 99)].iter().enumerate() {
        let (r, l) = clusters(3, 20, 8, *seed);
        let dir = lake.join(format!("events/day={day}"));
        std::fs::create_dir_all(&dir).unwrap();
        let lo = (k * 1000) as i64;
        write_parquet(&dir.join("part-0.parquet"), table(&r, &l, lo..lo + 60));
    }
    let local = |rest: &str| lake.join(rest).display().to_string();
    let model = local("models/m.parquet");
    std::fs::create_dir_all(lake.join("models")).unwrap();
    let train = |input: &str, output: &str| {
        let args = [
            "train", "--input", input, "--label", "label", "--recipe", "paper", "--epochs", "5",
            "--output", output,
        ];
        args.map(String::from)
    };
    let none = StoreEnv::default();
    let strs = |a: &[String]| a.to_vec();
    let run = |env: &StoreEnv, a: &[String]| {
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        ok(env, &a)
    };
    run(&none, &strs(&train(&local("train/"), &model)));

    let Some(emu) = Emulator::start_with_data(Kind::FakeGcs, Some(&t.join("data"))) else {
        return;
    };
    let env = emu.env();
    let u = |rest: &str| emu.url(&format!("lake/{rest}"));

    // Training from the store reads the same rows: the same memories and thresholds.
    let from_store = t.join("from-store.parquet").display().to_string();
    run(&env, &strs(&train(&u("train/"), &from_store)));
    let (a, b) = (
        reclag::format::load(Path::new(&from_store)).unwrap(),
        reclag::format::load(Path::new(&model)).unwrap(),
    );
    for (ga, gb) in a.groups().iter().zip(b.groups()) {
        assert_eq!((&ga.xi, ga.tau), (&gb.xi, gb.tau));
    }

    // score (a glob) and filter (a prefix), each against the same command on disk.
    for (cmd, input, extra) in [
        ("score", "events/day=*/*.parquet", vec!["--group", "label"]),
        (
            "filter",
            "events/",
            vec!["--group", "label", "--keep", "ood"],
        ),
    ] {
        let outs: Vec<_> = [
            (&env, u(input), u("models/m.parquet")),
            (&none, local(input), model.clone()),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, (e, input, m))| {
            let out = t.join(format!("{cmd}-{i}.parquet"));
            let mut a = vec![
                cmd.to_string(),
                "--model".into(),
                m,
                "--input".into(),
                input,
            ];
            a.extend(extra.iter().map(|s| s.to_string()));
            a.extend(["--output".to_string(), out.display().to_string()]);
            run(e, &a);
            read_parquet(&out)
        })
        .collect();
        let n = outs[0].num_rows();
        match cmd {
            "score" => assert_eq!(n, 120),
            _ => assert!((50..70).contains(&n), "mostly day 2's rows are OOD: {n}"),
        }
        assert_eq!(outs[0], outs[1], "{cmd} from gs:// differs from disk");
    }

    // SQL over the hive lake, the model also read from the store.
    let q = "SELECT day, label, count(*) AS n, \
             sum(CASE WHEN reclag_is_ood('m', embedding, label) THEN 1 ELSE 0 END) AS ood \
             FROM e GROUP BY day, label ORDER BY day, label";
    let sql = |e: &StoreEnv, table: String, m: String| {
        run(
            e,
            &strs(&[
                "sql".into(),
                "--table".into(),
                format!("e={table}"),
                "--model".into(),
                format!("m={m}"),
                q.into(),
            ]),
        )
    };
    let from_gs = sql(&env, u("events/"), u("models/m.parquet"));
    assert!(from_gs.contains("2026-11-02"), "{from_gs}");
    assert_eq!(from_gs, sql(&none, local("events/"), model.clone()));
}
