//! Object storage end to end against a real S3-compatible server (moto) started on
//! loopback: train from s3, score s3 → s3, SQL over an s3 hive-partitioned lake, and
//! the failures users hit (a missing object, a foreign object, missing credentials).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{ArrayRef, Int64Array};
use reclag_pipelines::store::{StoreEnv, Stores};

use crate::common::{clusters, fsl, read_parquet, write_parquet};

/// A moto S3 server on a free loopback port, killed on drop.
pub struct Moto {
    child: Child,
    pub endpoint: String,
    port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    /// Starts the server; `None` (with the reason printed) where moto is not installed
    /// on a user's machine. CI installs it (`.ci/run`) and sets
    /// `RECLAG_REQUIRE_SHARED=1`, which turns the skip into a failure.
    pub fn start() -> Option<Moto> {
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        let have = Command::new(&python)
            .args(["-c", "import moto.server, flask, werkzeug"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !have {
            let msg = "moto[server] is not installed (pip install 'moto[server]')";
            if std::env::var("RECLAG_REQUIRE_SHARED").is_ok_and(|v| v == "1") {
                panic!("{msg}; CI requires it");
            }
            eprintln!("SKIP: {msg}; S3 tests skipped");
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(&python)
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto");
        let moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            port,
        };
        let t0 = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "moto did not start within 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(moto)
    }

    /// Credentials and endpoint as a user would export them.
    pub fn env(&self) -> StoreEnv {
        StoreEnv::from_vars([
            ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
            ("AWS_SECRET_ACCESS_KEY", "moto-secret-do-not-print"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ENDPOINT_URL_S3", self.endpoint.as_str()),
        ])
    }

    /// Creates a bucket (object_store has no bucket API; moto accepts a bare PUT).
    pub fn bucket(&self, name: &str) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            s,
            "PUT /{name} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        assert!(resp.starts_with("HTTP/1.1 200"), "create bucket: {resp}");
    }
}

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

fn upload(stores: &Stores, url: &str, local: &Path) {
    stores
        .locate(url)
        .unwrap()
        .put(std::fs::read(local).unwrap().into())
        .unwrap();
}

fn download(stores: &Stores, url: &str, local: &Path) {
    let bytes = stores.locate(url).unwrap().get().unwrap();
    std::fs::write(local, &bytes).unwrap();
}

fn table(
    rows: &[Option<Vec<f32>>],
    labels: &[i64],
    ids: std::ops::Range<i64>,
) -> Vec<(&'static str, ArrayRef)> {
    vec![
        (
            "id",
            Arc::new(Int64Array::from_iter_values(ids)) as ArrayRef,
        ),
        ("embedding", fsl(rows, 8)),
        (
            "label",
            Arc::new(Int64Array::from(labels.to_vec())) as ArrayRef,
        ),
    ]
}

#[test]
fn s3_train_score_and_sql_over_a_hive_lake() {
    let Some(moto) = Moto::start() else { return };
    moto.bucket("lake");
    let env = moto.env();
    let stores = Stores::new(env.clone());
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();

    // Two training parts under a prefix.
    let (rows, labels) = clusters(3, 80, 8, 7);
    for (i, (r, l)) in rows.chunks(120).zip(labels.chunks(120)).enumerate() {
        let p = t.join(format!("train-{i}.parquet"));
        let lo = (i * 120) as i64;
        write_parquet(&p, table(r, l, lo..lo + r.len() as i64));
        upload(&stores, &format!("s3://lake/train/part-{i}.parquet"), &p);
    }
    let msg = ok(
        &env,
        &[
            "train",
            "--input",
            "s3://lake/train/",
            "--label",
            "label",
            "--recipe",
            "paper",
            "--epochs",
            "5",
            "--output",
            "s3://lake/models/m.parquet",
        ],
    );
    assert!(msg.contains("trained 3 group(s), d=8"), "{msg}");
    let info = ok(&env, &["inspect", "s3://lake/models/m.parquet"]);
    assert!(info.contains("dimension      8"), "{info}");

    // The same data trained locally gives the same model content (only the recorded
    // source differs), so the s3 reader saw exactly the same rows.
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
    download(&stores, "s3://lake/models/m.parquet", &remote_model);
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
            &format!("s3://lake/events/day={day}/part-0.parquet"),
            &p,
        );
    }

    // score s3 → s3 over a glob, then compare with scoring the same files locally.
    let msg = ok(
        &env,
        &[
            "score",
            "--model",
            "s3://lake/models/m.parquet",
            "--input",
            "s3://lake/events/day=*/*.parquet",
            "--output",
            "s3://lake/scored/all.parquet",
            "--group",
            "label",
        ],
    );
    assert!(msg.contains("scored 150 rows"), "{msg}");
    let scored = t.join("scored.parquet");
    download(&stores, "s3://lake/scored/all.parquet", &scored);
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
    assert_eq!(r, l, "s3 → s3 scoring differs from local scoring");
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
            "s3://lake/models/m.parquet",
            "--input",
            "s3://lake/events/day=*/*.parquet",
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
            "events=s3://lake/events/",
            "--model",
            "prod=s3://lake/models/m.parquet",
            "--output",
            &res.display().to_string(),
        ],
    );
    // The hive lake on S3 takes the fast list reader: the listing's object keys
    // match the files the table was registered with.
    let plan = ok(
        &env,
        &[
            "sql",
            &format!("EXPLAIN {q}"),
            "--table",
            "events=s3://lake/events/",
            "--model",
            "prod=s3://lake/models/m.parquet",
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
    // A glob table, a model URL inside the query, and a result written to s3.
    let q2 = "SELECT count(*) AS n FROM ev \
              WHERE reclag_is_ood('s3://lake/models/m.parquet', embedding, label)";
    ok(
        &env,
        &[
            "sql",
            q2,
            "--table",
            "ev=s3://lake/events/day=*/part-*.parquet",
            "--output",
            "s3://lake/results/n.parquet",
        ],
    );
    let res2 = t.join("n.parquet");
    download(&stores, "s3://lake/results/n.parquet", &res2);
    let b2 = read_parquet(&res2);
    assert_eq!(
        b2.column(0).as_primitive::<Int64Type>().value(0),
        ood_per_day(0) + ood_per_day(1)
    );
    // One object as a table: its embedding scan takes the fast list reader, over S3.
    let one = format!("ev=s3://lake/events/day={}/part-0.parquet", days[0]);
    let q3 = "SELECT count(*) AS n FROM ev WHERE reclag_is_ood('prod', embedding, label)";
    let model = "prod=s3://lake/models/m.parquet";
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
    let Some(moto) = Moto::start() else { return };
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
    let help = ok(&env, &["--help"]);
    for v in [
        "AWS_ACCESS_KEY_ID",
        "AWS_ENDPOINT_URL_S3",
        "GOOGLE_SERVICE_ACCOUNT",
        "AZURE_STORAGE_ACCOUNT_NAME",
    ] {
        assert!(help.contains(v), "--help does not name {v}");
    }
}
