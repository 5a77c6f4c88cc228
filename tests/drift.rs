//! Drift jobs end to end on a lake built from image_fmnist: the injected partitions
//! are flagged and no others, reruns add nothing, a crash at any checkpoint reruns to
//! the same bytes, bad specs and odd partitions are explained, and the exit codes.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use arrow_array::RecordBatch;
use reclag_pipelines::drift::{DriftJob, DriftSpec, Select};
use reclag_pipelines::store::{StoreEnv, Stores};

use crate::common::{cli_ok, read_parquet, shared, train_model};
use crate::emulators::{Emulator, Fault, FaultProxy, Kind, Rule};

pub const DRIFTED: [&str; 2] = ["2026-11-07", "2026-11-09"];

fn s(p: &Path) -> String {
    p.display().to_string()
}

pub fn parquet_bytes(batch: &RecordBatch) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut buf, batch.schema(), None).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
    buf
}

/// The reference: the first half of the ID test rows (the lake uses the second).
pub fn reference_file(dir: &Path) -> Vec<u8> {
    parquet_bytes(&read_parquet(&dir.join("id_test.parquet")).slice(0, 5000))
}

/// Ten daily partitions of 500 ID test rows each (the second half of the test set);
/// in the 7th and 9th, 100 rows (20 %) are replaced by MNIST digits (OOD). Returns
/// (partition value, Parquet bytes).
pub fn lake_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    lake_batches(dir)
        .into_iter()
        .map(|(v, b)| (v, parquet_bytes(&b)))
        .collect()
}

/// The rows of [`lake_files`], by day.
pub fn lake_batches(dir: &Path) -> Vec<(String, RecordBatch)> {
    let id = read_parquet(&dir.join("id_test.parquet"));
    let ood = read_parquet(&dir.join("ood_mnist.parquet"));
    (1..=10)
        .map(|day| {
            let value = format!("2026-11-{day:02}");
            let rows = id.slice(5000 + (day - 1) * 500, 500);
            let batch = if DRIFTED.contains(&value.as_str()) {
                let swapped = ood.slice(day * 100, 100);
                arrow_select::concat::concat_batches(
                    &id.schema(),
                    [&swapped, &rows.slice(100, 400)],
                )
                .unwrap()
            } else {
                rows
            };
            (value, batch)
        })
        .collect()
}

/// The issue's minimal spec, plus a `[reference]` of held-out ID rows.
pub fn spec_text(lake: &str, model: &str, out: &str) -> String {
    // Beside the model, in the store or on disk.
    let reference = match model.split_once("://") {
        Some((scheme, _)) => format!("{scheme}://lake/reference.parquet"),
        None => s(&Path::new(model).with_file_name("reference.parquet")),
    };
    format!(
        "{}\n[reference]\nurl = \"{reference}\"\n",
        minimal_spec(lake, model, out)
    )
}

pub fn minimal_spec(lake: &str, model: &str, out: &str) -> String {
    format!(
        r#"
[source]
url = "{lake}"
partitioning = "hive:date"
embedding = "embedding"
group = "label"

[model]
url = "{model}"

[output]
url = "{out}"

[alert]
alpha = 0.01
min_rows = 100
"#
    )
}

fn write_lake(root: &Path, files: &[(String, Vec<u8>)]) {
    for (value, bytes) in files {
        let d = root.join(format!("date={value}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("part-0.parquet"), bytes).unwrap();
    }
}

/// Trains the model at `out` and writes the reference rows beside it.
fn train(dir: &Path, out: &Path) {
    std::fs::write(out.with_file_name("reference.parquet"), reference_file(dir)).unwrap();
    train_model(&dir.join("id_train.parquet"), out, 5);
}

/// A trained model (with its reference rows) and a lake of the given partitions, in a
/// temporary directory; `None` where ../shared is absent.
struct Setup {
    dir: std::path::PathBuf,
    tmp: tempfile::TempDir,
    model: std::path::PathBuf,
    lake: std::path::PathBuf,
}

fn setup(parts: std::ops::Range<usize>) -> Option<Setup> {
    let dir = shared("data/image_fmnist")?;
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("m.parquet");
    train(&dir, &model);
    let lake = tmp.path().join("lake");
    write_lake(&lake, &lake_files(&dir)[parts]);
    Some(Setup {
        dir,
        tmp,
        model,
        lake,
    })
}

/// `reclag drift run ...` in-process: (exit code, stdout or error text).
fn drift_cli(args: &[&str]) -> (ExitCode, String) {
    let mut out = Vec::new();
    let mut full = vec!["reclag", "drift", "run"];
    full.extend_from_slice(args);
    match reclag_pipelines::cli::run(full, &mut out) {
        Ok(code) => (code, String::from_utf8(out).unwrap()),
        Err(e) => (ExitCode::from(1), e.to_string()),
    }
}

/// Every file below `dir`, relative path → bytes.
pub fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut m = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().display().to_string();
                m.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    m
}

/// The files that differ between two snapshots (or are in only one).
fn differing<'a>(
    a: &'a BTreeMap<String, Vec<u8>>,
    b: &'a BTreeMap<String, Vec<u8>>,
) -> Vec<&'a String> {
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .collect()
}

fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{e}: {line}"))
}

fn names(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| r["partition"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn drift_flags_exactly_the_injected_partitions_and_reruns_add_nothing() {
    let Some(Setup {
        dir,
        tmp,
        model,
        lake,
    }) = setup(0..9)
    else {
        return;
    };
    let files = lake_files(&dir);
    let out = tmp.path().join("out");
    let job = tmp.path().join("job.toml");
    std::fs::write(&job, spec_text(&s(&lake), &s(&model), &s(&out))).unwrap();

    // A dry run lists the work and writes nothing.
    let (code, line) = drift_cli(&[&s(&job), "--dry-run"]);
    assert_eq!(code, ExitCode::SUCCESS, "{line}");
    assert_eq!(json(&line)["partitions"].as_array().unwrap().len(), 9);
    assert!(!out.exists(), "a dry run writes nothing");

    let (code, line) = drift_cli(&[&s(&job)]);
    assert_eq!(code, ExitCode::from(2), "drift → exit 2: {line}");
    let v = json(&line);
    assert_eq!(names(&v["drifted"]), DRIFTED, "{line}");
    assert_eq!(v["partitions"].as_array().unwrap().len(), 9);
    assert!(v["drift"].as_bool().unwrap());

    // The metrics table is one queryable table: whole-partition rows have a null group.
    let table = format!("m={}/metrics/", s(&out));
    let res = cli_ok(&[
        "sql",
        "--table",
        &table,
        "SELECT partition, rows, ood_rate FROM m WHERE \"group\" IS NULL AND drift ORDER BY partition",
    ]);
    assert!(
        res.contains("2026-11-07") && res.contains("2026-11-09") && !res.contains("2026-11-08"),
        "{res}"
    );
    let res = cli_ok(&[
        "sql",
        "--table",
        &table,
        "SELECT count(*) AS n, count(DISTINCT partition) AS p, sum(CASE WHEN \"group\" IS NULL THEN rows END) AS r FROM m",
    ]);
    assert!(res.contains("| 9 ") && res.contains("| 4500 "), "{res}");
    // Worst rows: top 20 per partition, with all original columns and the explanation.
    let worst = read_parquet(&out.join("worst/part-2026-11-07.parquet"));
    assert_eq!(worst.num_rows(), 20);
    for c in [
        "partition",
        "embedding",
        "label",
        "source",
        "reclag_score",
        "reclag_explain",
    ] {
        assert!(worst.column_by_name(c).is_some(), "worst rows lack {c}");
    }
    let sources = worst
        .column_by_name("source")
        .unwrap()
        .as_any()
        .downcast_ref::<arrow_array::StringArray>()
        .unwrap()
        .iter()
        .filter(|s| s.is_some_and(|s| s.contains("mnist")))
        .count();
    assert!(
        sources >= 10,
        "the worst rows are mostly the injected digits: {sources}/20"
    );
    // The expected rate came from the reference, not the optimistic training split.
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("_state.json")).unwrap()).unwrap();
    let ref_rate = state["reference"]["ood_rows"].as_f64().unwrap() / 5000.0;
    assert_eq!(state["reference"]["rows"], 5000);
    assert!(ref_rate > 0.05 && ref_rate < 0.1, "{ref_rate}");
    let report = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(report.contains("<svg") && report.contains("2026-11-09"));

    // A rerun adds nothing and changes no byte.
    let before = snapshot(&out);
    let (code, line) = drift_cli(&[&s(&job)]);
    assert_eq!(code, ExitCode::SUCCESS, "{line}");
    let v = json(&line);
    assert!(line.len() < 4096, "one short line: {} bytes", line.len());
    assert_eq!(v["partitions"].as_array().unwrap().len(), 0);
    assert_eq!(v["already_done"], 9);
    assert_eq!(snapshot(&out), before, "a rerun rewrites nothing");

    // A new day arrives: only it is processed (clean → exit 0).
    write_lake(&lake, &files[9..]);
    let (code, line) = drift_cli(&[&s(&job), "--since", "2026-11-05"]);
    assert_eq!(code, ExitCode::SUCCESS, "{line}");
    let v = json(&line);
    assert_eq!(v["partitions"], serde_json::json!(["2026-11-10"]));
    assert_eq!(v["already_done"], 5);
    let (code, msg) = drift_cli(&[&s(&job), "--partition", "2026-12-01"]);
    assert_eq!(code, ExitCode::from(1));
    assert!(
        msg.contains("no such partition") && msg.contains("2026-11-10"),
        "{msg}"
    );

    // The issue's minimal spec, as written (no reference), judges against the model's
    // calibration (5 % on the training split). It runs and flags both injected days.
    let minimal = tmp.path().join("minimal.toml");
    let out2 = tmp.path().join("out-minimal");
    std::fs::write(&minimal, minimal_spec(&s(&lake), &s(&model), &s(&out2))).unwrap();
    let (code, line) = drift_cli(&[&s(&minimal)]);
    assert_eq!(code, ExitCode::from(2), "{line}");
    let v = json(&line);
    let drifted = names(&v["drifted"]);
    assert!(
        DRIFTED.iter().all(|p| drifted.iter().any(|d| d == p)),
        "{line}"
    );
    assert!(
        v["drifted"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["expected_rate"] == 0.05),
        "{line}"
    );
    eprintln!("minimal spec (calibrated 5 %) flags: {drifted:?}");
}

#[test]
fn a_crash_at_any_checkpoint_reruns_to_the_same_bytes() {
    let Some(Setup {
        dir: _,
        tmp,
        model,
        lake,
    }) = setup(0..4)
    else {
        return;
    };
    let stores = Arc::new(Stores::new(StoreEnv::default()));
    let job = |out: &Path| {
        let spec = DriftSpec::parse(&spec_text(&s(&lake), &s(&model), &s(out))).unwrap();
        DriftJob::new(spec, stores.clone())
    };
    let clean = tmp.path().join("clean");
    job(&clean).run().unwrap();
    let want = snapshot(&clean);
    assert!(want.contains_key("metrics/part-2026-11-03.parquet"));
    for point in [
        "metrics:2026-11-03",
        "worst:2026-11-03",
        "state:2026-11-03",
        "metrics:2026-11-01",
    ] {
        let out = tmp
            .path()
            .join(format!("crash-{}", point.replace(':', "-")));
        let stop = point.to_string();
        let e = job(&out)
            .fault_hook(Arc::new(move |p: &str| p == stop))
            .run()
            .unwrap_err()
            .to_string();
        assert!(e.contains("fault injected"), "{e}");
        assert!(
            snapshot(&out) != want,
            "{point}: the crash left the run unfinished"
        );
        job(&out).run().unwrap();
        let got = snapshot(&out);
        let differ = differing(&want, &got);
        assert!(
            differ.is_empty(),
            "{point}: rerun after the crash differs in {differ:?}"
        );
    }
}

#[test]
fn drift_bad_specs_and_odd_partitions_are_explained() {
    let Some(Setup {
        dir: _,
        tmp,
        model,
        lake,
    }) = setup(0..2)
    else {
        return;
    };
    let out = tmp.path().join("out");
    let good = spec_text(&s(&lake), &s(&model), &s(&out));

    for (bad, want) in [
        (
            good.replace("alpha =", "alpah ="),
            "unknown field `alpah`, expected one of `alpha`",
        ),
        (
            good.replace("hive:date", "daily"),
            "source.partitioning = 'daily': expected 'hive:KEY'",
        ),
        (
            good.replace("alpha = 0.01", "alpha = 2"),
            "alert.alpha = 2: expected a level strictly between 0 and 1",
        ),
        (good.replace("[model]", "[modle]"), "unknown field `modle`"),
        (
            good.replace("[output]\nurl", "[output]\nuri"),
            "unknown field `uri`",
        ),
    ] {
        let e = DriftSpec::parse(&bad).unwrap_err();
        assert!(e.contains(want), "{want}: {e}");
    }
    // A spec file with an error names the file, and nothing is read or written.
    let job = tmp.path().join("bad.toml");
    std::fs::write(
        &job,
        good.replace("top_k", "x").replace("min_rows", "min_row"),
    )
    .unwrap();
    let (code, e) = drift_cli(&[&s(&job)]);
    assert_eq!(code, ExitCode::from(1));
    assert!(e.contains("bad.toml") && e.contains("min_row"), "{e}");
    assert!(!out.exists());
    // A missing model.
    std::fs::write(&job, good.replace(&s(&model), "/nonexistent/model.parquet")).unwrap();
    let (_, e) = drift_cli(&[&s(&job)]);
    assert!(
        e.contains("model.url") && e.contains("/nonexistent/model.parquet"),
        "{e}"
    );

    // An empty partition and one with another embedding dimension are skipped, and
    // the summary and the report say why; the good partitions are still scored.
    std::fs::create_dir_all(lake.join("date=2026-11-03")).unwrap();
    let narrow = lake.join("date=2026-11-04");
    std::fs::create_dir_all(&narrow).unwrap();
    let (rows, labels) = crate::common::clusters(2, 50, 64, 3);
    crate::common::write_parquet(
        &narrow.join("part-0.parquet"),
        vec![
            ("embedding", crate::common::fsl(&rows, 64)),
            ("label", Arc::new(arrow_array::Int64Array::from(labels))),
        ],
    );
    std::fs::write(&job, &good).unwrap();
    let (code, line) = drift_cli(&[&s(&job)]);
    assert_eq!(code, ExitCode::SUCCESS, "{line}");
    let v = json(&line);
    assert_eq!(names(&v["skipped"]), ["2026-11-03", "2026-11-04"], "{line}");
    let reasons: Vec<&str> = v["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["reason"].as_str().unwrap())
        .collect();
    assert!(reasons[0].contains("no Parquet files"), "{reasons:?}");
    assert!(
        reasons[1].contains("expected embedding dimension 128, found 64"),
        "{reasons:?}"
    );
    let report = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(
        report.contains("Skipped partitions") && report.contains("found 64"),
        "report says why"
    );
}

/// The same lake on the real S3-compatible server: lake, model and outputs in S3.
#[test]
fn drift_over_an_s3_lake() {
    drift_over_a_store_lake(Kind::S3);
}

#[test]
fn drift_over_an_azure_lake() {
    drift_over_a_store_lake(Kind::Azure);
}

/// On GCS's XML API (served from moto, see `tests/emulators.rs`): the lock is a
/// create-only put (`x-goog-if-generation-match: 0`), its heartbeat a generation match.
#[test]
fn drift_over_a_gcs_lake() {
    drift_over_a_store_lake(Kind::Gcs);
}

/// A drift job whose lake, model, output and state all live in the store: the drifted
/// days found, a rerun adds nothing, and the run's lock is a conditional create there.
fn drift_over_a_store_lake(kind: Kind) {
    let Some(dir) = shared("data/image_fmnist") else {
        return;
    };
    let Some(emu) = Emulator::start(kind) else {
        return;
    };
    emu.bucket("lake");
    let u = |rest: &str| emu.url(rest);
    let stores = Arc::new(Stores::new(emu.env()));
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("m.parquet");
    train(&dir, &model);
    let put = |url: &str, bytes: Vec<u8>| {
        stores.locate(url).unwrap().put(bytes.into()).unwrap();
    };
    put(&u("lake/models/m.parquet"), std::fs::read(&model).unwrap());
    put(&u("lake/reference.parquet"), reference_file(&dir));
    for (value, bytes) in lake_files(&dir) {
        put(
            &u(&format!("lake/events/date={value}/part-0.parquet")),
            bytes,
        );
    }
    let spec = DriftSpec::parse(&spec_text(
        &u("lake/events"),
        &u("lake/models/m.parquet"),
        &u("lake/drift-out/"),
    ))
    .unwrap();
    let summary = DriftJob::new(spec.clone(), stores.clone()).run().unwrap();
    let drifted: Vec<&str> = summary
        .drifted
        .iter()
        .map(|r| r.partition.as_str())
        .collect();
    assert_eq!(drifted, DRIFTED);
    assert_eq!(summary.partitions.len(), 10);
    let state = stores
        .locate(&u("lake/drift-out/_state.json"))
        .unwrap()
        .get()
        .unwrap();
    let again = DriftJob::new(spec.clone(), stores.clone())
        .select(Select::All)
        .run()
        .unwrap();
    assert!(again.partitions.is_empty() && !again.drift);
    assert_eq!(
        stores
            .locate(&u("lake/drift-out/_state.json"))
            .unwrap()
            .get()
            .unwrap(),
        state,
        "a rerun leaves the state as it was"
    );
    let listed = stores
        .locate(&u("lake/drift-out/metrics/"))
        .unwrap()
        .list()
        .unwrap();
    assert_eq!(
        listed.len(),
        10,
        "one metrics file per partition, no duplicates"
    );
    assert!(
        stores
            .locate(&u("lake/drift-out/report.html"))
            .unwrap()
            .head()
            .unwrap()
            .is_some()
    );
    // The run deleted its lock object; one left by another run (here: put by hand)
    // is honoured through the store's conditional create, and its holder named.
    let lock = stores.locate(&u("lake/drift-out/_lock")).unwrap();
    assert!(
        lock.head().unwrap().is_none(),
        "the lock object outlived its run"
    );
    lock.put("pid 7 on another-host".into()).unwrap();
    let held = DriftJob::new(spec.clone(), stores.clone())
        .lock_wait(std::time::Duration::ZERO)
        .run()
        .unwrap_err()
        .to_string();
    assert!(
        held.contains("another drift run holds this output (pid 7 on another-host)"),
        "{held}"
    );
    assert_eq!(lock.get().unwrap(), "pid 7 on another-host".as_bytes());
    store_lock_heartbeat_and_takeover(&stores, &spec, &lock);
    assert!(
        lock.head().unwrap().is_none(),
        "a taken-over lock is released too"
    );
    if kind == Kind::S3 {
        forbidden_partition_then_rerun(
            &emu,
            &spec_text(
                &u("lake/events"),
                &u("lake/models/m.parquet"),
                &u("lake/drift-403/"),
            ),
        );
    }
}

/// Object-store locks left by killed runs are taken over; live ones are not. With
/// `lock` holding a foreign object that never changes (a run killed with `kill -9`):
/// a holder that keeps rewriting it (alive) is waited for and named, never taken
/// over; once it stops, the next run takes the lock over after `stale_after` and
/// completes. A reclag run's own heartbeat keeps a waiter out until it releases.
fn store_lock_heartbeat_and_takeover(
    stores: &Arc<Stores>,
    spec: &DriftSpec,
    lock: &reclag_pipelines::store::Location,
) {
    use reclag_pipelines::drift::lock::RunLock;
    use std::time::{Duration, Instant};
    let stale = Duration::from_millis(600);
    // Alive: rewritten every 100 ms with a new heartbeat (so a new ETag).
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let beating = {
        let (lock, stop) = (lock.clone(), stop.clone());
        std::thread::spawn(move || {
            for beat in 0u64.. {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                lock.put(format!("pid 7 on another-host\nheartbeat {beat}").into())
                    .unwrap();
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let err = DriftJob::new(spec.clone(), stores.clone())
        .lock_wait(Duration::from_millis(2000))
        .lock_stale_after(stale)
        .run()
        .unwrap_err();
    // A caller that would rather wait than fail can tell this error from the others.
    match &err {
        reclag_pipelines::Error::Locked { holder, .. } => {
            assert!(holder.starts_with("pid 7 on another-host"), "{holder}")
        }
        other => panic!("expected Error::Locked, found {other:?}"),
    }
    let e = err.to_string();
    assert!(
        e.contains("another drift run holds this output (pid 7 on another-host)")
            && e.contains("taken over once it has had no heartbeat for 600ms"),
        "{e}"
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    beating.join().unwrap();
    // Dead: unchanged from now on; taken over after `stale`, and the run completes.
    let t0 = Instant::now();
    let done = DriftJob::new(spec.clone(), stores.clone())
        .lock_wait(Duration::from_secs(20))
        .lock_stale_after(stale)
        .run()
        .unwrap();
    assert!(t0.elapsed() >= stale, "taken over before it was stale");
    assert!(done.partitions.is_empty(), "{}", done.json_line());
    assert!(lock.head().unwrap().is_none(), "the new holder released it");
    // A live reclag holder's heartbeat keeps a waiter out for longer than `stale`.
    let holder = RunLock::acquire_with(lock, Duration::ZERO, stale, "pid 8 on this-host").unwrap();
    let t0 = Instant::now();
    let e = RunLock::acquire_with(lock, Duration::from_millis(2500), stale, "pid 9")
        .err()
        .expect("a live holder is never taken over")
        .to_string();
    assert!(
        t0.elapsed() >= Duration::from_millis(2500) && e.contains("pid 8 on this-host"),
        "{e}"
    );
    let text = String::from_utf8(lock.get().unwrap().to_vec()).unwrap();
    assert!(text.starts_with("pid 8 on this-host\nheartbeat "), "{text}");
    holder.check().unwrap();
    drop(holder);
    let next = RunLock::acquire_with(lock, Duration::ZERO, stale, "pid 9").unwrap();
    drop(next);
}

/// A 403 on one partition's object fails the run naming the object; that partition
/// has no metrics and is not in the state, and a rerun without the fault completes the
/// lake with one metrics file per partition.
fn forbidden_partition_then_rerun(emu: &Emulator, spec: &str) {
    let spec = DriftSpec::parse(spec).unwrap();
    let proxy = FaultProxy::start(
        emu,
        vec![Rule::new(
            "GET",
            "/lake/events/date=2026-11-05/",
            Fault::Status(403),
            usize::MAX,
        )],
    );
    let faulty = Arc::new(Stores::new(proxy.env(emu, &[])));
    let e = DriftJob::new(spec.clone(), faulty)
        .run()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&emu.url("lake/events/date=2026-11-05/part-0.parquet")),
        "{e}"
    );
    let stores = Arc::new(Stores::new(emu.env()));
    let metrics = |stores: &Stores| -> Vec<String> {
        stores
            .locate(&emu.url("lake/drift-403/metrics/"))
            .unwrap()
            .list()
            .unwrap()
            .into_iter()
            .map(|m| m.location.to_string())
            .collect()
    };
    assert!(
        !metrics(&stores).iter().any(|m| m.contains("2026-11-05")),
        "{:?}",
        metrics(&stores)
    );
    if let Ok(state) = stores
        .locate(&emu.url("lake/drift-403/_state.json"))
        .unwrap()
        .get()
    {
        assert!(!String::from_utf8_lossy(&state).contains("2026-11-05"));
    }
    let summary = DriftJob::new(spec, stores.clone()).run().unwrap();
    assert!(
        summary.partitions.iter().any(|p| p == "2026-11-05"),
        "{:?}",
        summary.partitions
    );
    assert_eq!(metrics(&stores).len(), 10, "{:?}", metrics(&stores));
}

/// A one-thread HTTP server on loopback that answers each request with the next
/// status of `statuses` (repeating the last) and records the bodies it got.
fn hook_server(statuses: Vec<u16>) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let bodies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = bodies.clone();
    std::thread::spawn(move || {
        for (i, conn) in listener.incoming().enumerate() {
            let Ok(mut conn) = conn else { return };
            let mut r = BufReader::new(conn.try_clone().unwrap());
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            seen.lock().unwrap().push(String::from_utf8(body).unwrap());
            let status = statuses[i.min(statuses.len() - 1)];
            let _ = write!(
                conn,
                "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    (url, bodies)
}

#[test]
fn webhook_posts_the_summary_with_retries() {
    let Some(Setup {
        dir: _,
        tmp,
        model,
        lake,
    }) = setup(5..7)
    else {
        return;
    };
    let stores = Arc::new(Stores::new(StoreEnv::default()));
    let run = |out: &str, url: &str| {
        let text = format!(
            "{}\n[webhook]\nurl = \"{url}\"\nretries = 2\nbackoff_ms = 20\n",
            spec_text(&s(&lake), &s(&model), &s(&tmp.path().join(out)))
        );
        DriftJob::new(DriftSpec::parse(&text).unwrap(), stores.clone())
            .run()
            .unwrap()
    };
    // A 503, then success: delivered on the second attempt, with the summary as body.
    let (url, bodies) = hook_server(vec![503, 200]);
    let summary = run("a", &url);
    assert!(summary.drift);
    assert_eq!(summary.webhook.as_deref(), Some("delivered (attempt 2)"));
    let got = bodies.lock().unwrap().clone();
    assert_eq!(got.len(), 2);
    let body = json(&got[1]);
    assert_eq!(names(&body["drifted"]), ["2026-11-07"]);
    // Always failing: the run still succeeds and says the webhook failed.
    let (url, bodies) = hook_server(vec![500]);
    let summary = run("b", &url);
    let w = summary.webhook.unwrap();
    assert!(
        w.starts_with("failed") && w.contains("3 attempt(s)") && w.contains("500"),
        "{w}"
    );
    assert_eq!(bodies.lock().unwrap().len(), 3);
    assert!(
        tmp.path().join("b/report.html").exists(),
        "outputs are committed anyway"
    );
    // A 404 is not retried.
    let (url, bodies) = hook_server(vec![404]);
    let w = run("c", &url).webhook.unwrap();
    assert!(
        w.contains("HTTP 404") && w.contains("check webhook.url"),
        "{w}"
    );
    assert_eq!(bodies.lock().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_runs_on_an_interval_and_stops_cleanly() {
    let Some(Setup {
        dir,
        tmp,
        model,
        lake,
    }) = setup(0..3)
    else {
        return;
    };
    let spec = DriftSpec::parse(&spec_text(
        &s(&lake),
        &s(&model),
        &s(&tmp.path().join("out")),
    ))
    .unwrap();
    let stores = Arc::new(Stores::new(StoreEnv::default()));
    let done = Arc::new(tokio::sync::Notify::new());
    let notify = done.clone();
    let mut runs = Vec::new();
    reclag_pipelines::drift::watch::watch(
        DriftJob::new(spec.clone(), stores.clone()),
        std::time::Duration::from_millis(100),
        async move { done.notified().await },
        |r| {
            runs.push(r.unwrap());
            if runs.len() == 2 {
                notify.notify_one();
            }
        },
    )
    .await;
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0].partitions.len(), 3, "the first run does the work");
    assert!(runs[1].partitions.is_empty() && runs[1].already_done == 3);

    // A shutdown request stops a run before its next partition; what it did stays.
    write_lake(&lake, &lake_files(&dir)[3..5]);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let s2 = DriftJob::new(spec, stores).cancel_flag(stop).run().unwrap();
    assert!(s2.interrupted && !s2.drift);
    assert!(
        s2.partitions.is_empty(),
        "nothing processed after the request"
    );
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("out/_state.json")).unwrap())
            .unwrap();
    assert_eq!(state["partitions"].as_object().unwrap().len(), 3);
}

/// The ten-day lake run once through `reclag drift run` (exit 2: the injected days):
/// (its temporary directory, the output, the job spec).
fn drifted_lake() -> Option<(tempfile::TempDir, std::path::PathBuf, std::path::PathBuf)> {
    let Setup {
        tmp, model, lake, ..
    } = setup(0..10)?;
    let out = tmp.path().join("out");
    let job = tmp.path().join("job.toml");
    std::fs::write(&job, spec_text(&s(&lake), &s(&model), &s(&out))).unwrap();
    let (code, line) = drift_cli(&[&s(&job)]);
    assert_eq!(code, ExitCode::from(2), "{line}");
    Some((tmp, out, job))
}

/// The report renders in headless Chromium with no console errors and no failed
/// loads, and the screenshot has real content.
#[test]
fn the_report_renders_in_headless_chromium() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        let msg = format!("{chromium} not found (apt-get install chromium)");
        if std::env::var("RECLAG_REQUIRE_SHARED").is_ok_and(|v| v == "1") {
            panic!("{msg}; CI requires it");
        }
        eprintln!("SKIP: {msg}; report rendering not tested");
        return;
    }
    let Some((tmp, out, _)) = drifted_lake() else {
        return;
    };
    let report = out.join("report.html");
    let html = std::fs::read_to_string(&report).unwrap();
    assert!(
        !html.contains("http://") && !html.contains("https://") && !html.contains("<script"),
        "self-contained: no network, no script"
    );
    let shot = tmp.path().join("report.png");
    let profile = tmp.path().join("chromium-profile");
    let o = std::process::Command::new(&chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
            "--hide-scrollbars",
            "--window-size=900,1800",
            &format!("--user-data-dir={}", profile.display()),
            &format!("--screenshot={}", shot.display()),
        ])
        .arg(url::Url::from_file_path(&report).unwrap().as_str())
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "chromium failed: {log}");
    let console: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains("CONSOLE") || l.contains("Failed to load resource") || l.contains("Uncaught")
        })
        .collect();
    assert!(console.is_empty(), "console output: {console:?}");
    let png = std::fs::read(&shot).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    assert!(
        png.len() > 30_000,
        "a screenshot with content: {} bytes",
        png.len()
    );
    if let Ok(keep) = std::env::var("RECLAG_KEEP_SCREENSHOT") {
        std::fs::copy(&shot, keep).unwrap();
    }
}

/// Unix seconds of 2026-11-`day` 00:00 UTC.
fn nov(day: i64) -> i64 {
    (20_757 + day) * 86_400
}

/// `b` with an `event_time` column (microseconds, UTC).
fn with_time(b: &RecordBatch, ts: Vec<Option<i64>>) -> RecordBatch {
    use arrow_array::TimestampMicrosecondArray;
    let t =
        arrow_schema::DataType::Timestamp(arrow_schema::TimeUnit::Microsecond, Some("UTC".into()));
    let col = TimestampMicrosecondArray::from(ts).with_timezone("UTC");
    crate::common::with_column(
        b,
        arrow_schema::Field::new("event_time", t, true),
        Arc::new(col),
    )
}

/// The same ten days as one flat lake partitioned by an `event_time` column: three
/// files whose boundaries cut through days, 300-row row groups, and five rows with a
/// null timestamp (which belong to no window).
fn write_time_lake(root: &Path, days: &[(String, RecordBatch)]) -> Vec<std::path::PathBuf> {
    let mut stamped = vec![];
    for (i, (_, b)) in days.iter().enumerate() {
        let start = nov(i as i64 + 1) * 1_000_000;
        let ts: Vec<Option<i64>> = (0..b.num_rows() as i64)
            .map(|j| Some(start + j * 172_000_000))
            .collect();
        stamped.push(with_time(b, ts));
    }
    let nulls = with_time(&days[0].1.slice(0, 5), vec![None; 5]);
    let schema = stamped[0].schema();
    let all = arrow_select::concat::concat_batches(&schema, &stamped).unwrap();
    std::fs::create_dir_all(root).unwrap();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_max_row_group_row_count(Some(300))
        .build();
    let cuts = [(0, 2250), (2250, 4000), (4000, 5000)];
    cuts.iter()
        .enumerate()
        .map(|(i, &(a, b))| {
            let path = root.join(format!("events-{i}.parquet"));
            let f = std::fs::File::create(&path).unwrap();
            let mut w =
                parquet::arrow::ArrowWriter::try_new(f, schema.clone(), Some(props.clone()))
                    .unwrap();
            w.write(&all.slice(a, b - a)).unwrap();
            if i == 2 {
                w.write(&nulls).unwrap();
            }
            w.close().unwrap();
            path
        })
        .collect()
}

/// Zeroes every byte of a Parquet file between its magic and its footer: any read of
/// a data page now fails, while the footer still opens.
fn wreck_pages(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let n = bytes.len();
    let footer = u32::from_le_bytes(bytes[n - 8..n - 4].try_into().unwrap()) as usize;
    bytes[4..n - 8 - footer].fill(0);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn time_windows_cut_a_flat_lake_like_its_hive_layout() {
    let Some(Setup {
        dir,
        tmp,
        model,
        lake,
    }) = setup(0..10)
    else {
        return;
    };
    let tlake = tmp.path().join("tlake");
    let files = write_time_lake(&tlake, &lake_batches(&dir));
    let stores = Arc::new(Stores::new(StoreEnv::default()));
    let hive_out = tmp.path().join("hive-out");
    let hive = DriftSpec::parse(&spec_text(&s(&lake), &s(&model), &s(&hive_out))).unwrap();
    DriftJob::new(hive, stores.clone()).run().unwrap();

    let out = tmp.path().join("out");
    let text = spec_text(&s(&tlake), &s(&model), &s(&out)).replace(
        "partitioning = \"hive:date\"",
        "partitioning = \"time:event_time\"\nwindow = \"1d\"\nlateness = \"2h\"",
    );
    let spec = DriftSpec::parse(&text).unwrap();
    let at = |secs: i64| -> reclag_pipelines::drift::Clock {
        Arc::new(move || std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64))
    };
    let run = |now: i64| {
        DriftJob::new(spec.clone(), stores.clone())
            .clock(at(now))
            .run()
            .unwrap()
    };

    // 2026-11-11 01:00: the 10th has ended but is inside its 2 h lateness.
    let first = run(nov(11) + 3_600);
    let days: Vec<String> = (1..=9).map(|d| format!("2026-11-{d:02}")).collect();
    assert_eq!(first.partitions, days);
    assert_eq!(first.pending, ["2026-11-10"]);
    let drifted: Vec<&str> = first.drifted.iter().map(|p| p.partition.as_str()).collect();
    assert_eq!(drifted, DRIFTED);
    // Same rows, same order: each window's metrics are byte for byte those of its
    // hive partition (the five null-timestamp rows landed nowhere).
    let metrics = |root: &Path, day: &str| {
        std::fs::read(root.join(format!("metrics/part-{day}.parquet"))).unwrap()
    };
    for d in &days {
        assert!(metrics(&out, d) == metrics(&hive_out, d), "{d}");
    }

    // Later, the 10th is due. The first two files hold nothing newer than the 8th,
    // so their pages are never read: wrecking them changes nothing.
    wreck_pages(&files[0]);
    wreck_pages(&files[1]);
    let second = run(nov(11) + 3 * 3_600);
    assert_eq!(second.partitions, ["2026-11-10"]);
    assert!(second.pending.is_empty() && !second.drift, "{second:?}");
    assert_eq!(second.already_done, 9);
    assert!(metrics(&out, "2026-11-10") == metrics(&hive_out, "2026-11-10"));

    // Late rows for a processed day are not counted, and a rerun changes no byte.
    let before = snapshot(&out);
    std::fs::copy(&files[2], tlake.join("late.parquet")).unwrap();
    let third = run(nov(12));
    assert!(third.partitions.is_empty(), "{third:?}");
    assert_eq!(third.already_done, 10);
    assert_eq!(snapshot(&out), before);

    // A timestamp column of the wrong type names the file, the column and its type.
    let bad = tmp.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("x.parquet"), &lake_files(&dir)[0].1).unwrap();
    let bad_spec = DriftSpec::parse(
        &text
            .replace(&s(&tlake), &s(&bad))
            .replace("time:event_time", "time:label"),
    )
    .unwrap();
    let e = DriftJob::new(bad_spec, stores.clone())
        .run()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("x.parquet: column 'label' is Int64")
            && e.contains("expects a timestamp or date column"),
        "{e}"
    );
}

/// `b` with row `row`'s embedding null: the fast decoder declines its row group.
fn with_null_embedding(b: &RecordBatch, row: usize) -> RecordBatch {
    use arrow_array::{Array, FixedSizeListArray};
    let i = b.schema().index_of("embedding").unwrap();
    let old = b
        .column(i)
        .as_any()
        .downcast_ref::<FixedSizeListArray>()
        .unwrap();
    let arrow_schema::DataType::FixedSizeList(item, dim) = old.data_type() else {
        panic!("embedding is {}", old.data_type());
    };
    let valid: Vec<bool> = (0..b.num_rows()).map(|r| r != row).collect();
    let new =
        FixedSizeListArray::try_new(item.clone(), *dim, old.values().clone(), Some(valid.into()))
            .unwrap();
    let mut cols = b.columns().to_vec();
    cols[i] = Arc::new(new);
    RecordBatch::try_new(b.schema(), cols).unwrap()
}

/// Scoring pages as they are decoded (the default) writes the bytes that scoring
/// whole Arrow batches writes: metrics, worst rows with their embeddings, state and
/// report, for hive partitions and for time windows that cut through row groups. One
/// partition mixes both paths: a null embedding sends its first row group through the
/// general reader, while its second is fused.
#[test]
fn fused_drift_writes_the_bytes_of_the_arrow_path() {
    let Some(Setup {
        dir,
        tmp,
        model,
        lake,
    }) = setup(0..4)
    else {
        return;
    };
    let days = lake_batches(&dir);
    let mixed = lake.join("date=2026-11-05");
    std::fs::create_dir_all(&mixed).unwrap();
    let b = with_null_embedding(&days[4].1, 7);
    crate::common::write_row_groups(&mixed.join("part-0.parquet"), &b, 300);
    let tlake = tmp.path().join("tlake");
    write_time_lake(&tlake, &days);

    let stores = Arc::new(Stores::new(StoreEnv::default()));
    let clock: reclag_pipelines::drift::Clock =
        Arc::new(|| std::time::UNIX_EPOCH + std::time::Duration::from_secs(nov(12) as u64));
    let hive = |out: &Path| spec_text(&s(&lake), &s(&model), &s(out));
    let time = |out: &Path| {
        spec_text(&s(&tlake), &s(&model), &s(out)).replace(
            "partitioning = \"hive:date\"",
            "partitioning = \"time:event_time\"\nwindow = \"1d\"",
        )
    };
    for (name, text) in [("hive", &hive as &dyn Fn(&Path) -> String), ("time", &time)] {
        let run = |fused: bool| {
            let out = tmp.path().join(format!("{name}-{fused}"));
            let spec = DriftSpec::parse(&text(&out)).unwrap();
            let summary = DriftJob::new(spec, stores.clone())
                .clock(clock.clone())
                .fused(fused)
                .run()
                .unwrap();
            (summary, snapshot(&out))
        };
        let (fused, want) = (run(true), run(false));
        assert_eq!(fused.0.partitions, want.0.partitions, "{name}");
        assert!(fused.0.partitions.len() >= 5, "{name}: {:?}", fused.0);
        assert!(want.1.keys().any(|k| k.starts_with("worst/")), "{name}");
        let differ = differing(&want.1, &fused.1);
        assert!(
            differ.is_empty(),
            "{name}: fused output differs in {differ:?}"
        );
    }
}

/// An output made with one model refuses another: the error says which model made it
/// and which one is there now, so a scheduler can start a new output instead.
#[test]
fn a_changed_model_is_refused_naming_both_checksums() {
    let Some(Setup {
        dir,
        tmp,
        model,
        lake,
    }) = setup(0..2)
    else {
        return;
    };
    let stores = Arc::new(Stores::new(StoreEnv::default()));
    let out = tmp.path().join("out");
    let run = || {
        let spec = DriftSpec::parse(&spec_text(&s(&lake), &s(&model), &s(&out))).unwrap();
        DriftJob::new(spec, stores.clone()).run()
    };
    run().unwrap();
    let before = snapshot(&out);
    let first = reclag::format::checksum(&reclag::format::load(&model).unwrap());
    let second = reclag::format::checksum(&train_model(&dir.join("id_train.parquet"), &model, 1));
    assert_ne!(first, second);
    match run().unwrap_err() {
        reclag_pipelines::Error::ModelChanged {
            recorded, found, ..
        } => assert_eq!((recorded, found), (first, second)),
        other => panic!("expected Error::ModelChanged, found {other:?}"),
    }
    assert!(snapshot(&out) == before, "a refused run changed the output");
}

/// A partition with a file that cannot be read (its pages wrecked, not Parquet at all,
/// the label column of another type) is skipped with the reason in the summary, the
/// state and the report, and every other partition is processed. With `strict` the
/// run fails at it instead, naming it, after publishing the partitions before it; with
/// the file repaired, a rerun gives the bytes of a clean run.
#[test]
fn an_unreadable_partition_is_skipped_with_its_reason_or_fails_when_strict() {
    let Some(Setup {
        dir: _,
        tmp,
        model,
        lake,
    }) = setup(0..4)
    else {
        return;
    };
    let stores = Arc::new(Stores::new(StoreEnv::default()));
    let run = |out: &Path, strict: bool| {
        let spec = DriftSpec::parse(&spec_text(&s(&lake), &s(&model), &s(out))).unwrap();
        DriftJob::new(spec, stores.clone()).strict(strict).run()
    };
    let clean = tmp.path().join("clean");
    run(&clean, false).unwrap();
    let want = snapshot(&clean);
    let file = |day: u32| lake.join(format!("date=2026-11-{day:02}/part-0.parquet"));
    for (day, how) in [(3u32, "pages"), (2, "not parquet"), (3, "label type")] {
        let saved = std::fs::read(file(day)).unwrap();
        match how {
            "pages" => wreck_pages(&file(day)),
            "not parquet" => std::fs::write(file(day), b"not a parquet file at all").unwrap(),
            _ => {
                let b = read_parquet(&file(day));
                let at = b.schema().index_of("label").unwrap();
                use arrow_array::cast::AsArray;
                let ints = b.column(at).as_primitive::<arrow_array::types::Int64Type>();
                let text: arrow_array::ArrayRef = Arc::new(arrow_array::StringArray::from_iter(
                    ints.iter().map(|v| v.map(|x| x.to_string())),
                ));
                let b = crate::common::set_column(
                    &b,
                    at,
                    arrow_schema::Field::new("label", arrow_schema::DataType::Utf8, true),
                    text,
                );
                std::fs::write(file(day), parquet_bytes(&b)).unwrap();
            }
        }
        let value = format!("2026-11-{day:02}");
        let out = tmp.path().join(format!("skip-{how}"));
        let summary = run(&out, false).unwrap_or_else(|e| panic!("{how}: {e}"));
        let skipped: Vec<_> = summary
            .skipped
            .iter()
            .map(|b| b.partition.clone())
            .collect();
        assert_eq!(skipped, std::slice::from_ref(&value), "{how}");
        let reason = summary.skipped[0].reason.clone().unwrap();
        assert!(reason.contains(&format!("date={value}")), "{how}: {reason}");
        assert_eq!(summary.partitions.len(), 4, "{how}");
        assert_eq!(state_partitions(&out), Some(4), "{how}");
        for d in 1..=4u32 {
            let metrics = out.join(format!("metrics/part-2026-11-{d:02}.parquet"));
            assert_eq!(metrics.exists(), d != day, "{how}: day {d}");
        }
        let report = std::fs::read_to_string(out.join("report.html")).unwrap();
        let shown = reason.split(": ").last().unwrap();
        assert!(
            report.contains(&html_escape(shown)),
            "{how}: the report lacks {shown}"
        );

        let out = tmp.path().join(format!("strict-{how}"));
        let err = run(&out, true).unwrap_err();
        assert!(
            matches!(&err, reclag_pipelines::Error::StrictSkip { partition, .. } if *partition == value),
            "{how}: {err:?}"
        );
        let e = err.to_string();
        assert!(
            e.contains(&format!("partition {value}")) && e.contains("--strict"),
            "{how}: {e}"
        );
        assert_eq!(state_partitions(&out), Some(day as usize - 1), "{how}");
        for d in 1..=4u32 {
            let metrics = out.join(format!("metrics/part-2026-11-{d:02}.parquet"));
            assert_eq!(metrics.exists(), d < day, "{how}: day {d}");
        }
        std::fs::write(file(day), saved).unwrap();
        run(&out, true).unwrap();
        assert!(
            snapshot(&out) == want,
            "{how}: the rerun differs from a clean run"
        );
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Not a test of its own: the child process of
/// `sigterm_stops_a_watch_process_between_partitions`, which re-runs this test binary
/// to get a real process to signal. Runs the CLI with the JSON arguments in
/// `RECLAG_CHILD_ARGS` and exits with its exit code.
#[test]
#[ignore = "child-process entry point, started by sigterm_stops_a_watch_process_between_partitions"]
fn cli_child_process() {
    let Ok(args) = std::env::var("RECLAG_CHILD_ARGS") else {
        return;
    };
    let args: Vec<String> = serde_json::from_str(&args).unwrap();
    // What the binary's `main` runs (allocator settings included, so memory measured
    // here is the binary's).
    let code = match reclag_pipelines::cli::main_with(args) {
        c if c == ExitCode::SUCCESS => 0,
        c if c == ExitCode::from(2) => 2,
        _ => 1,
    };
    // This process's own peak (VmHWM of the memory map exec gave it). The parent's
    // wait4 `ru_maxrss` would also count the copy of the parent a fork makes before
    // exec, which holds the test's data.
    if let Some(kb) = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:").map(str::to_string))
        })
    {
        eprintln!("peak_rss_kb={}", kb.trim().trim_end_matches("kB").trim());
    }
    std::process::exit(code);
}

/// This test binary re-run as [`cli_child_process`] with CLI arguments `args` (a JSON
/// array), stdio not yet set: a real `reclag` process to signal, race or measure.
pub(crate) fn cli_child(args: &serde_json::Value) -> std::process::Command {
    let mut c = std::process::Command::new(std::env::current_exe().unwrap());
    c.args([
        "--exact",
        "drift::cli_child_process",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
        "-q",
    ])
    .env("RECLAG_CHILD_ARGS", args.to_string());
    c
}

/// [`cli_child`] with its output piped.
fn spawn_cli_child(args: &serde_json::Value) -> std::process::Child {
    cli_child(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) with a pid this test spawned and still owns (not yet reaped).
    let r = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(r, 0, "kill({pid}, {sig})");
}

fn state_partitions(out: &Path) -> Option<usize> {
    let bytes = std::fs::read(out.join("_state.json")).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    Some(v["partitions"].as_object()?.len())
}

/// `reclag drift watch` as a real process: frozen (SIGSTOP) right after its first
/// partition commits, sent SIGTERM, then resumed. It finishes the partition in hand,
/// stops before the next, prints an interrupted summary and exits 0; a later run
/// completes the lake with outputs byte-identical to an uninterrupted run.
#[test]
fn sigterm_stops_a_watch_process_between_partitions() {
    let Some((_tmp, out, job)) = drifted_lake() else {
        return;
    };
    let uninterrupted = snapshot(&out);
    std::fs::remove_dir_all(&out).unwrap();

    let args = serde_json::json!(["reclag", "drift", "watch", s(&job), "--every", "1h"]);
    let mut child = spawn_cli_child(&args);
    let pid = child.id();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let at_stop = loop {
        if let Some(n) = state_partitions(&out).filter(|&n| n >= 1) {
            signal(pid, libc::SIGSTOP);
            break state_partitions(&out).unwrap_or(n);
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the watch exited before its first partition"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "no partition in 120 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    };
    signal(pid, libc::SIGTERM);
    signal(pid, libc::SIGCONT);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the watch did not exit after SIGTERM");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(0), "{stdout}\n{stderr}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no summary line: {stdout}\n{stderr}"));
    let summary = json(line);
    assert_eq!(summary["interrupted"], true, "{line}");
    let done = summary["partitions"].as_array().unwrap().len();
    assert!(
        (at_stop..10).contains(&done),
        "stopped after {at_stop} partition(s), then did {done}: {line}"
    );
    assert_eq!(
        state_partitions(&out),
        Some(done),
        "the state lists what ran"
    );
    assert!(out.join("report.html").exists());

    let (code, line) = drift_cli(&[&s(&job)]);
    assert_eq!(code, ExitCode::from(2), "{line}");
    assert_eq!(
        json(&line)["partitions"].as_array().unwrap().len(),
        10 - done,
        "{line}"
    );
    assert!(
        snapshot(&out) == uninterrupted,
        "outputs differ from an uninterrupted run"
    );
}

/// Three `reclag drift run --partition` processes on one output at once: the lock
/// queues them, so the state lists all three partitions and each was processed by
/// exactly one run; a plain run then adds the fourth, and the output is byte for byte
/// that of one run over the lake. A run that may not wait names the holder.
#[test]
fn concurrent_runs_on_one_output_queue_behind_its_lock() {
    let Some(Setup {
        dir: _,
        tmp,
        model,
        lake,
    }) = setup(0..4)
    else {
        return;
    };
    let job_for = |out: &Path| {
        let job = out.with_extension("toml");
        std::fs::write(&job, spec_text(&s(&lake), &s(&model), &s(out))).unwrap();
        job
    };
    let clean = tmp.path().join("clean");
    let (code, _) = drift_cli(&[&s(&job_for(&clean))]);
    assert_eq!(code, ExitCode::SUCCESS);
    let want = snapshot(&clean);

    let out = tmp.path().join("out");
    let job = job_for(&out);
    let children: Vec<_> = (1..=3)
        .map(|day| {
            let args = serde_json::json!([
                "reclag",
                "drift",
                "run",
                s(&job),
                "--partition",
                format!("2026-11-{day:02}")
            ]);
            spawn_cli_child(&args)
        })
        .collect();
    let mut processed = Vec::new();
    for child in children {
        let o = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{stdout}\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        let line = stdout.lines().find(|l| l.starts_with('{')).unwrap();
        let v = json(line);
        processed.extend(
            v["partitions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_str().unwrap().to_string()),
        );
    }
    processed.sort();
    assert_eq!(processed, ["2026-11-01", "2026-11-02", "2026-11-03"]);
    assert_eq!(state_partitions(&out), Some(3));
    let (code, text) = drift_cli(&[&s(&job)]);
    assert_eq!(code, ExitCode::SUCCESS, "{text}");
    let v = json(&text);
    let added: Vec<&str> = v["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(added, ["2026-11-04"]);
    let got = snapshot(&out);
    assert!(
        got == want,
        "differs from one run: {:?}",
        differing(&got, &want)
    );

    // A holder that does not let go: a run that may not wait exits naming it.
    let lock = std::fs::File::options()
        .write(true)
        .open(out.join("_lock"))
        .unwrap();
    lock.lock().unwrap();
    std::fs::write(out.join("_lock"), "pid 1 on the-other-host").unwrap();
    let (code, text) = drift_cli(&[&s(&job), "--lock-wait", "0s"]);
    assert_eq!(code, ExitCode::from(1));
    assert!(
        text.contains("another drift run holds this output (pid 1 on the-other-host)"),
        "{text}"
    );
    drop(lock);
}

/// A lake of clean `id_test` partitions of 700 rows, routed by label, judged by a
/// whitened model trained on `id_train`. Against the model's calibration level (5 %)
/// some clean days alert, because `id_test` is flagged more often than the held-out
/// training rows τ was set on; the summary and the report say that this is the
/// baseline and what to do. With the first week as the reference (named, or as a
/// period: the same rows) no later day alerts, the reference days are not judged,
/// and the report says which baseline was used. (Daily counts vary more than a
/// binomial would: 35 to 66 of 700, so a reference of a few days can itself run low;
/// with the first four days, 6.5 % against 7.2 % over all, the day with 66 alerts at
/// p = 0.006.) Every partition reports its share of rows
/// with a p-value below `alert.p_level`, and the report draws their histogram.
#[test]
fn clean_partitions_alert_only_without_a_reference() {
    let Some(dir) = shared("data/image_fmnist") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("m.parquet");
    cli_ok(&[
        "train",
        "--input",
        &s(&dir.join("id_train.parquet")),
        "--label",
        "label",
        "--output",
        &s(&model),
    ]);
    let id = read_parquet(&dir.join("id_test.parquet"));
    let lake = tmp.path().join("lake");
    let days: Vec<String> = (1..=14).map(|d| format!("2026-10-{d:02}")).collect();
    let files: Vec<(String, Vec<u8>)> = days
        .iter()
        .enumerate()
        .map(|(i, v)| (v.clone(), parquet_bytes(&id.slice(i * 700, 700))))
        .collect();
    write_lake(&lake, &files);
    let run = |name: &str, reference: &str| -> (serde_json::Value, String) {
        let out = tmp.path().join(name);
        let job = tmp.path().join(format!("{name}.toml"));
        std::fs::write(
            &job,
            format!(
                "{}{reference}",
                minimal_spec(&s(&lake), &s(&model), &s(&out))
            ),
        )
        .unwrap();
        let (code, line) = drift_cli(&[&s(&job)]);
        let summary = json(&line);
        let drifted = !summary["drifted"].as_array().unwrap().is_empty();
        assert_eq!(code, ExitCode::from(if drifted { 2 } else { 0 }), "{line}");
        let report = std::fs::read_to_string(out.join("report.html")).unwrap();
        (summary, report)
    };
    let (none, report) = run("none", "");
    for d in &days {
        let m = read_parquet(&tmp.path().join(format!("none/metrics/part-{d}.parquet")));
        use arrow_array::cast::AsArray;
        let ood = m
            .column_by_name("ood_rows")
            .unwrap()
            .as_primitive::<arrow_array::types::UInt64Type>()
            .value(0);
        let p = m
            .column_by_name("p_value")
            .unwrap()
            .as_primitive::<arrow_array::types::Float64Type>()
            .value(0);
        eprintln!("{d}: {ood} of 700 flagged, binomial p against 5 %: {p:.2e}");
    }
    let alerted = names(&none["drifted"]);
    eprintln!("without a reference, clean days that alert: {alerted:?}");
    assert!(!alerted.is_empty(), "{none}");
    assert_eq!(names_of(&none["partitions"]).len(), 14);
    let baseline = none["baseline"].as_str().unwrap();
    assert!(
        baseline.contains("the model's calibration level, ood_rate = 0.05")
            && baseline.contains("[reference]")
            && baseline.contains("reclag calibrate"),
        "{baseline}"
    );
    assert!(report.contains("Expected rate: the model's calibration level"));
    assert!(report.contains("p-values of 2026-10-14") && report.contains("p-value histogram"));
    // Fresh ID rows: more small p-values than the level, as the rates say.
    let metrics = read_parquet(&tmp.path().join("none/metrics/part-2026-10-14.parquet"));
    use arrow_array::cast::AsArray;
    let low = metrics
        .column_by_name("low_p_rate")
        .unwrap()
        .as_primitive::<arrow_array::types::Float64Type>()
        .value(0);
    assert!(low > 0.03 && low < 0.15, "low_p_rate {low}");

    for (name, reference) in [
        (
            "named",
            "\n[reference]\npartitions = [\"2026-10-01\", \"2026-10-02\", \"2026-10-03\", \"2026-10-04\", \"2026-10-05\", \"2026-10-06\", \"2026-10-07\"]\n",
        ),
        (
            "period",
            "\n[reference]\nfrom = \"2026-10-01\"\nto = \"2026-10-07\"\n",
        ),
    ] {
        let (with, report) = run(name, reference);
        assert!(names(&with["drifted"]).is_empty(), "{name}: {with}");
        assert_eq!(names_of(&with["partitions"]), days[7..].to_vec(), "{name}");
        let baseline = with["baseline"].as_str().unwrap();
        assert!(
            baseline.starts_with("the reference (partitions ")
                && baseline.contains("of its 4900 rows flagged"),
            "{baseline}"
        );
        assert!(
            report.contains("Expected rate: the reference (partitions"),
            "{name}"
        );
    }
    // A reference partition that does not exist is named.
    let job = tmp.path().join("bad.toml");
    std::fs::write(
        &job,
        format!(
            "{}\n[reference]\npartitions = [\"2026-09-30\"]\n",
            minimal_spec(&s(&lake), &s(&model), &s(&tmp.path().join("bad")))
        ),
    )
    .unwrap();
    let (code, e) = drift_cli(&[&s(&job)]);
    assert_eq!(code, ExitCode::from(1));
    assert!(
        e.contains("no partition 2026-09-30") && e.contains("2026-10-01"),
        "{e}"
    );
}

fn names_of(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect()
}
