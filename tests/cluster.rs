//! `reclag sql --cluster` on a real Ballista cluster: a scheduler and two executors,
//! each a child process on loopback (`reclag cluster scheduler|executor`) with one
//! core and a work dir of its own, over a hive lake on disk and on the S3 test server.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use reclag_pipelines::store::{StoreEnv, Stores};

use crate::cluster_procs::{Cluster, free_port};
use crate::common::{read_parquet, train_model, write_row_groups};
use crate::emulators::{Emulator, Kind};
use crate::stores::upload;

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// A cluster whose processes are this test binary run as `reclag` (see
/// `crate::drift::cli_child`) with the object-store variables of `env`.
fn start_cluster(dir: &Path, env: &StoreEnv) -> Cluster {
    Cluster::start(dir, |args| {
        let mut argv = vec!["reclag".to_string()];
        argv.extend_from_slice(args);
        let mut c = crate::drift::cli_child(&serde_json::json!(argv));
        for (k, v) in env.vars() {
            c.env(k, v);
        }
        c
    })
}

fn cli_env(env: &StoreEnv, args: &[String]) -> Result<String, String> {
    let mut out = Vec::new();
    let mut full = vec!["reclag".to_string()];
    full.extend_from_slice(args);
    reclag_pipelines::cli::run_with(full, env.clone(), &mut out)
        .map(|_| String::from_utf8(out).unwrap())
        .map_err(|e| e.to_string())
}

/// A hive lake of four files in two day partitions (128-row row groups), and a decoy
/// file beside them that the glob `day=*/part-*.parquet` does not match. Returns the
/// lake's root and the rows in the four files.
fn write_lake(root: &Path, id: &RecordBatch, ood: &RecordBatch) -> usize {
    let halves = |b: &RecordBatch| {
        let h = b.num_rows() / 2;
        [b.slice(0, h), b.slice(h, b.num_rows() - h)]
    };
    let [id0, id1] = halves(id);
    let [ood0, ood1] = halves(ood);
    let mut rows = 0;
    for (day, parts) in [("2026-12-01", [&id0, &ood0]), ("2026-12-02", [&id1, &ood1])] {
        let dir = root.join(format!("day={day}"));
        std::fs::create_dir_all(&dir).unwrap();
        for (i, b) in parts.iter().enumerate() {
            write_row_groups(&dir.join(format!("part-{i}.parquet")), b, 128);
            rows += b.num_rows();
        }
    }
    write_row_groups(&root.join("day=2026-12-01/decoy.parquet"), &id0, 128);
    rows
}

/// The queries both modes run: a GROUP BY over `reclag_is_ood` across both days,
/// `reclag_explain` fields and scores under a hive partition filter, and counts that
/// tell a glob table from its prefix.
fn queries() -> Vec<String> {
    vec![
        "SELECT day, reclag_is_ood('prod', embedding, label) AS ood, count(*) AS n \
         FROM t GROUP BY day, ood ORDER BY day, ood"
            .into(),
        "SELECT label, reclag_explain('prod', embedding)['nearest_memory'] AS nm, \
                reclag_explain('prod', embedding)['group'] AS g, \
                reclag_score('prod', embedding, label) AS s \
         FROM t WHERE day = '2026-12-02' ORDER BY s, nm, label"
            .into(),
        "SELECT (SELECT count(*) FROM t) AS glob_rows, (SELECT count(*) FROM lake) AS prefix_rows"
            .into(),
    ]
}

fn sql_args(tables: &[(&str, String)], model: &str, query: &str) -> Vec<String> {
    let mut a = vec!["sql".to_string()];
    for (name, url) in tables {
        a.push("--table".into());
        a.push(format!("{name}={url}"));
    }
    a.push("--model".into());
    a.push(format!("prod={model}"));
    a.push(query.into());
    a
}

/// What the local and cluster runs of `queries` print, with `--cluster url` or not.
fn run_all(
    env: &StoreEnv,
    tables: &[(&str, String)],
    model: &str,
    cluster: Option<&str>,
) -> Vec<String> {
    queries()
        .iter()
        .map(|q| {
            let mut a = sql_args(tables, model, q);
            if let Some(url) = cluster {
                a.splice(1..1, ["--cluster".to_string(), url.to_string()]);
            }
            cli_env(env, &a).unwrap_or_else(|e| panic!("{a:?}: {e}"))
        })
        .collect()
}

/// The lake on disk: cluster results equal local ones, row for row; the glob reads
/// its four files and not the decoy; both executors ran fast scans (their own logs)
/// and wrote stage outputs (their own work dirs). Then the faults: a model replaced
/// after planning, a model replaced between two queries, an unreachable scheduler,
/// an executor killed mid-query.
#[test]
fn sql_on_a_cluster_equals_local_sql() {
    let tmp = tempfile::tempdir().unwrap();
    let sample = reclag_pipelines::ops::demo::write_sample(tmp.path()).unwrap();
    let model = tmp.path().join("m.parquet");
    train_model(&sample[0], &model, 3);
    let lake = tmp.path().join("lake");
    let rows = write_lake(&lake, &read_parquet(&sample[1]), &read_parquet(&sample[2]));
    let env = StoreEnv::default();
    let tables = [
        ("t", format!("{}/day=*/part-*.parquet", s(&lake))),
        ("lake", s(&lake)),
    ];
    let local = run_all(&env, &tables, &s(&model), None);
    let decoy = read_parquet(&lake.join("day=2026-12-01/decoy.parquet")).num_rows();
    assert!(
        local[2].contains(&format!("| {rows}"))
            && local[2].contains(&format!("| {} ", rows + decoy)),
        "{}",
        local[2]
    );
    assert!(
        local[0].contains("true") && local[0].contains("false"),
        "{}",
        local[0]
    );

    let mut cluster = start_cluster(tmp.path(), &env);
    let remote = run_all(&env, &tables, &s(&model), Some(&cluster.url));
    for (q, (l, r)) in queries().iter().zip(local.iter().zip(&remote)) {
        assert_eq!(l, r, "{q}\n{}", cluster.logs());
    }
    for (e, w) in cluster.executors.iter().zip(&cluster.work) {
        let log = e.log();
        assert!(log.contains("reclag: fast scan of "), "{log}");
        assert!(
            std::fs::read_dir(w).unwrap().next().is_some(),
            "{} holds the executor's stage outputs",
            w.display()
        );
    }

    // A model replaced after the client planned the query: the cluster refuses it,
    // naming the model, its URL and both checksums.
    let other = tmp.path().join("other.parquet");
    train_model(&sample[0], &other, 1);
    let (old_sha, new_sha) = (checksum(&model), checksum(&other));
    assert_ne!(old_sha, new_sha);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let e = rt.block_on(async {
        let stores = Arc::new(Stores::default());
        let job = reclag_pipelines::ops::sql::SqlJob::new(stores, queries()[0].clone())
            .tables(vec![("t".into(), tables[0].1.clone())])
            .models(vec![("prod".into(), s(&model))])
            .cluster(Some(cluster.url.clone()));
        let ctx = reclag_pipelines::ops::sql::session_for(&job).await.unwrap();
        let df = ctx.sql(&queries()[0]).await.unwrap();
        std::fs::copy(&other, &model).unwrap();
        df.collect().await.unwrap_err().to_string()
    });
    assert!(
        e.contains("prod")
            && e.contains(&old_sha)
            && e.contains(&new_sha)
            && e.contains("m.parquet"),
        "{e}"
    );

    // The next query picks up the new model (the executors hold no stale copy).
    let local_new = run_all(&env, &tables, &s(&model), None);
    assert_ne!(local_new[1], local[1], "the other model scores differently");
    let remote_new = run_all(&env, &tables, &s(&model), Some(&cluster.url));
    assert_eq!(remote_new, local_new);

    // Nothing listens: a clear error within seconds.
    let t0 = Instant::now();
    let dead = format!("df://127.0.0.1:{}", free_port());
    let mut a = sql_args(&tables, &s(&model), &queries()[0]);
    a.splice(1..1, ["--cluster".to_string(), dead.clone()]);
    let e = cli_env(&env, &a).unwrap_err();
    assert!(
        e.contains(&dead) && e.contains("no Ballista scheduler answers"),
        "{e}"
    );
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());

    // An executor killed mid-query: the query completes on the other one with the
    // same rows, or fails with an error; never a wrong or partial result. A table
    // big enough that the query is still running when the kill lands: eight files
    // of ten copies of the ID rows.
    let big = tmp.path().join("big");
    std::fs::create_dir_all(&big).unwrap();
    let id = read_parquet(&sample[1]);
    let copies = arrow_select::concat::concat_batches(&id.schema(), &vec![id.clone(); 10]).unwrap();
    for i in 0..8 {
        write_row_groups(&big.join(format!("part-{i}.parquet")), &copies, 1000);
    }
    let q = "SELECT label, count(*) AS n, sum(CASE WHEN reclag_is_ood('prod', embedding) THEN 1 ELSE 0 END) AS ood, \
             round(sum(reclag_score('prod', embedding, label)), 6) AS s FROM big GROUP BY label ORDER BY label";
    let big_table = [("big", s(&big))];
    let expected = cli_env(&env, &sql_args(&big_table, &s(&model), q)).unwrap();
    let mut a = sql_args(&big_table, &s(&model), q);
    a.splice(1..1, ["--cluster".to_string(), cluster.url.clone()]);
    let (env2, a2) = (env.clone(), a.clone());
    let victim = &mut cluster.executors[1];
    let before = victim.log().matches("reclag: fast scan of ").count();
    let query = std::thread::spawn(move || cli_env(&env2, &a2));
    let t0 = Instant::now();
    while victim.log().matches("reclag: fast scan of ").count() == before {
        assert!(
            !query.is_finished(),
            "the victim ran no task: {}",
            victim.log()
        );
        assert!(t0.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(5));
    }
    victim.kill();
    assert!(!query.is_finished(), "killed while the query ran");
    let outcome = match query.join().unwrap() {
        Ok(out) => {
            assert_eq!(out, expected, "completed on the surviving executor");
            "completed with the local result".to_string()
        }
        Err(e) => {
            assert!(
                e.contains("Job") || e.contains("executor") || e.contains("connect"),
                "a failure says why: {e}"
            );
            format!("failed: {e}")
        }
    };
    eprintln!(
        "query with a killed executor {outcome} after {:?}",
        t0.elapsed()
    );
    assert!(
        t0.elapsed() < Duration::from_secs(240),
        "the query ended within 4 min: {:?}",
        t0.elapsed()
    );
}

fn checksum(path: &Path) -> String {
    reclag::format::checksum(&reclag::format::load(path).unwrap())
}

/// The same lake and model on the S3 test server (moto): the client, the scheduler
/// and the executors read them with the environment's credentials, and the results
/// equal local SQL over the same files on disk.
#[test]
fn sql_on_a_cluster_reads_s3_with_the_environments_credentials() {
    let Some(emu) = Emulator::start(Kind::S3) else {
        return;
    };
    emu.bucket("lake");
    let env = emu.env();
    let stores = Stores::new(env.clone());
    let tmp = tempfile::tempdir().unwrap();
    let sample = reclag_pipelines::ops::demo::write_sample(tmp.path()).unwrap();
    let model = tmp.path().join("m.parquet");
    train_model(&sample[0], &model, 3);
    let lake = tmp.path().join("lake");
    write_lake(&lake, &read_parquet(&sample[1]), &read_parquet(&sample[2]));
    upload(&stores, "s3://lake/models/m.parquet", &model);
    for day in ["2026-12-01", "2026-12-02"] {
        for f in std::fs::read_dir(lake.join(format!("day={day}"))).unwrap() {
            let f = f.unwrap().path();
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            upload(&stores, &format!("s3://lake/events/day={day}/{name}"), &f);
        }
    }
    let local_tables = [
        ("t", format!("{}/day=*/part-*.parquet", s(&lake))),
        ("lake", s(&lake)),
    ];
    let s3_tables = [
        ("t", "s3://lake/events/day=*/part-*.parquet".to_string()),
        ("lake", "s3://lake/events/".to_string()),
    ];
    let local = run_all(&StoreEnv::default(), &local_tables, &s(&model), None);
    let cluster = start_cluster(tmp.path(), &env);
    let remote = run_all(
        &env,
        &s3_tables,
        "s3://lake/models/m.parquet",
        Some(&cluster.url),
    );
    assert_eq!(remote, local);
    for e in &cluster.executors {
        let log = e.log();
        assert!(
            log.contains("reclag: fast scan of ") && log.contains("s3://lake/events/"),
            "{log}"
        );
    }

    // `reclag score --cluster` store to store, routed by best margin: the parts
    // under the output prefix, in order, are the local output.
    let local_out = tmp.path().join("scored.parquet");
    let score = |model: &str, input: &str, out: &str| -> Vec<String> {
        [
            "score",
            "--model",
            model,
            "--input",
            input,
            "--output",
            out,
            "--keep-columns",
            "label",
        ]
        .map(String::from)
        .to_vec()
    };
    cli_env(
        &StoreEnv::default(),
        &score(&s(&model), &local_tables[0].1, &s(&local_out)),
    )
    .unwrap();
    let mut a = score(
        "s3://lake/models/m.parquet",
        &s3_tables[0].1,
        "s3://lake/scored",
    );
    a.extend(["--cluster", &cluster.url, "--partitions", "3"].map(String::from));
    let msg = cli_env(&env, &a).unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    assert!(msg.contains("3 part files"), "{msg}");
    let got = tmp.path().join("got");
    std::fs::create_dir_all(&got).unwrap();
    for i in 0..3 {
        let name = format!("part-{i:05}.parquet");
        crate::stores::download(
            &stores,
            &format!("s3://lake/scored/{name}"),
            &got.join(&name),
        );
    }
    assert_eq!(concat_parts(&got), read_parquet(&local_out));
}

/// Part files of a cluster output in name order, with their bytes.
fn parts_of(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

/// The rows of part files in name order, as one batch.
fn concat_parts(dir: &Path) -> RecordBatch {
    let batches: Vec<RecordBatch> = parts_of(dir)
        .iter()
        .map(|(n, _)| read_parquet(&dir.join(n)))
        .collect();
    arrow_select::concat::concat_batches(&batches[0].schema(), &batches).unwrap()
}

/// Staging directories left beside an output.
fn staging_left(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("reclag-staging") || n.contains("reclag-old"))
        .collect()
}

/// `reclag score --cluster`: the executors write one part per partition, and the
/// parts in name order hold exactly the rows `reclag score` writes locally; both
/// executors wrote parts; a rerun gives the same bytes; a run that fails on an
/// executor (a file whose pages are zeroed) publishes nothing and leaves the earlier
/// output as it was.
#[test]
fn score_on_a_cluster_equals_local_score() {
    let tmp = tempfile::tempdir().unwrap();
    let sample = reclag_pipelines::ops::demo::write_sample(tmp.path()).unwrap();
    let model = tmp.path().join("m.parquet");
    train_model(&sample[0], &model, 3);
    let lake = tmp.path().join("lake");
    let rows = write_lake(&lake, &read_parquet(&sample[1]), &read_parquet(&sample[2]));
    let env = StoreEnv::default();
    let input = format!("{}/day=*/part-*.parquet", s(&lake));
    let local = tmp.path().join("local.parquet");
    let args = |out: &Path, cluster: Option<&str>| {
        let mut a: Vec<String> = [
            "score",
            "--model",
            &s(&model),
            "--input",
            &input,
            "--output",
            &s(out),
            "--group",
            "label",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        if let Some(url) = cluster {
            a.extend(["--cluster", url, "--partitions", "4"].map(String::from));
        }
        a
    };
    cli_env(&env, &args(&local, None)).unwrap();
    let want = read_parquet(&local);
    assert_eq!(want.num_rows(), rows);

    let cluster = start_cluster(tmp.path(), &env);
    let out_dir = tmp.path().join("scored");
    let msg = cli_env(&env, &args(&out_dir, Some(&cluster.url)))
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    assert!(
        msg.contains(&format!("scored {rows} rows")) && msg.contains("4 part files"),
        "{msg}"
    );
    let parts = parts_of(&out_dir);
    assert_eq!(
        parts.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        [
            "part-00000.parquet",
            "part-00001.parquet",
            "part-00002.parquet",
            "part-00003.parquet"
        ]
    );
    let got = concat_parts(&out_dir);
    assert_eq!(got.schema(), want.schema());
    assert_eq!(got, want, "the parts in order are the local output");
    for e in &cluster.executors {
        let log = e.log();
        assert!(
            log.contains("reclag: wrote ") && log.contains("reclag: fast scan of "),
            "{log}"
        );
    }
    assert!(
        staging_left(tmp.path()).is_empty(),
        "{:?}",
        staging_left(tmp.path())
    );

    // `reclag filter --cluster --keep ood`: the input columns of exactly the rows the
    // local score flags (and as many as local `reclag filter` keeps).
    let filtered = tmp.path().join("quarantine");
    let filter = |out: &Path, cluster: Option<&str>| {
        let mut a: Vec<String> = [
            "filter",
            "--model",
            &s(&model),
            "--input",
            &input,
            "--output",
            &s(out),
            "--group",
            "label",
            "--keep",
            "ood",
        ]
        .map(String::from)
        .to_vec();
        if let Some(url) = cluster {
            a.extend(["--cluster", url, "--partitions", "3"].map(String::from));
        }
        cli_env(&env, &a).unwrap_or_else(|e| panic!("{e}"))
    };
    let local_msg = filter(&tmp.path().join("q.parquet"), None);
    let msg = filter(&filtered, Some(&cluster.url));
    let flagged = want
        .column_by_name("reclag_is_ood")
        .unwrap()
        .as_any()
        .downcast_ref::<arrow_array::BooleanArray>()
        .unwrap()
        .clone();
    let n_in = read_parquet(&sample[1]).num_columns();
    let inputs = want.project(&(0..n_in).collect::<Vec<_>>()).unwrap();
    let expect = arrow_select::filter::filter_record_batch(&inputs, &flagged).unwrap();
    assert!(expect.num_rows() > 0 && expect.num_rows() < rows);
    assert_eq!(concat_parts(&filtered), expect);
    let kept = format!("kept {} of {rows} rows (OOD)", expect.num_rows());
    assert!(
        local_msg.contains(&kept) && msg.contains(&kept),
        "{local_msg}\n{msg}"
    );

    // A rerun replaces the output with the same bytes.
    cli_env(&env, &args(&out_dir, Some(&cluster.url))).unwrap();
    assert_eq!(parts_of(&out_dir), parts);

    // A file that fails to decode on an executor: the run fails and publishes
    // nothing; the earlier output stays whole.
    let victim = lake.join("day=2026-12-02/part-1.parquet");
    crate::common::zero_column_chunks(&victim.clone(), &victim);
    let e = cli_env(&env, &args(&out_dir, Some(&cluster.url))).unwrap_err();
    assert!(e.contains("nothing was published"), "{e}");
    assert_eq!(parts_of(&out_dir), parts, "the earlier output is untouched");
    assert!(
        staging_left(tmp.path()).is_empty(),
        "{:?}",
        staging_left(tmp.path())
    );

    // Standard input and output stay local.
    let e = cli_env(&env, &args(Path::new("-"), Some(&cluster.url))).unwrap_err();
    assert!(e.contains("drop --cluster"), "{e}");
}
