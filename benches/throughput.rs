//! Parquet → OOD scores, end to end, each figure against a peer measured in the same
//! run (these machines are noisy; ratios are what carry over):
//!
//! - **decode floors**: what `reclag score` decodes, the way it does, with a checksum
//!   in place of the math (`--decode-only as-score`); and every column decoded into
//!   Arrow arrays by the same reader, every batch discarded;
//! - **score**: `reclag score` Parquet → Parquet (keeping `id`), routed by `label`;
//! - **sql**: `SELECT count(*) FROM t WHERE reclag_is_ood('m', embedding, label)`
//!   through DataFusion, against `reclag score`;
//! - **polars**: `filter(is_ood(embedding, label)) → count` on the frames of reclag's
//!   reader (`reclag_pipelines::ops::frames`, what `reclag filter` runs), and on Polars' own
//!   `scan_parquet` through its streaming engine, each against the SQL path;
//! - **drift**: `reclag drift run` over a lake of 10 daily partitions × 100k rows,
//!   and SQL's OOD count over it as a hive table, against `reclag score` over the
//!   same files;
//! - **memory**: peak RSS of `reclag score --input - --output -` streaming 1M and 10M
//!   generated rows (no disk), each in a fresh process;
//! - **stores**: `reclag score` store → store from moto (S3) and Azurite on loopback, against local disk → local disk, with the requests made
//!   (counted by a pass-through proxy in a separate run). Skipped, with the reason,
//!   where a server is not installed (see the README), or with
//!   `RECLAG_BENCH_STORES=0`.
//!
//!     cargo bench --bench throughput
//!
//! - **p-values**: `reclag score` with the `reclag_p_value` column (a model with
//!   calibration scores) against the same model without them, and `reclag filter
//!   --fdr 0.1` (two passes) against `reclag filter --keep id`, same table;
//!
//! - **cluster**: `reclag sql --cluster` on a Ballista scheduler and two one-core
//!   executors (processes on loopback), with the fast list reader on the executors and
//!   with DataFusion's Parquet scan, against local `reclag sql`;
//!
//! - **python**: the Python package (`udfs/python`), with `RECLAG_BENCH_PYTHON` naming
//!   an interpreter that has it installed (a release wheel): Polars `scan_parquet →
//!   filter(is_ood) → len` with the expression plugin against the same query with
//!   `reclag_udfs::polars` in this process and against `reclag filter`'s path; and
//!   `Model.score` on the table in memory against the same core calls here;
//!
//! `RECLAG_BENCH_ONLY=stores` (or `pvalues`, `cluster`, `python`) runs that section
//! alone.
//! `RECLAG_BENCH_ROWS` sets the Parquet table size (default 1M × 512, K = 10, M = 16;
//! the file is generated once under `target/bench-data/`); `RECLAG_BENCH_RSS_ROWS` the
//! streamed sizes (default `1000000,10000000`); `RECLAG_BENCH_RUNS` the repeats.

#[path = "fixture.rs"]
mod fixture;

/// The servers the object-store tests run against, reused here.
#[path = "../tests/emulators.rs"]
#[allow(dead_code)]
mod emulators;

/// The cluster the cluster tests start, started here the same way.
#[path = "../tests/cluster_procs.rs"]
#[allow(dead_code)]
mod cluster_procs;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arrow_array::builder::{FixedSizeListBuilder, Float32Builder};
use arrow_array::{ArrayRef, Int64Array, RecordBatch};
use arrow_schema::SchemaRef;
use fixture::D;
use reclag_pipelines::io::ParquetFile;
use reclag_pipelines::ops::route::Routing;
use reclag_pipelines::ops::score::{ScoreJob, ScoreSummary};
use reclag_pipelines::ops::sql::SqlJob;
use reclag_pipelines::store::{StoreEnv, Stores};

const GEN_BATCH: usize = 16 * 1024;

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn batch(start: usize, n: usize) -> RecordBatch {
    let (x, labels) = fixture::rows(start, n);
    let mut b =
        FixedSizeListBuilder::with_capacity(Float32Builder::with_capacity(n * D), D as i32, n);
    b.values().append_slice(&x);
    for _ in 0..n {
        b.append(true);
    }
    RecordBatch::try_from_iter([
        (
            "id",
            Arc::new(Int64Array::from_iter_values(
                start as i64..(start + n) as i64,
            )) as ArrayRef,
        ),
        ("embedding", Arc::new(b.finish()) as ArrayRef),
        ("label", Arc::new(Int64Array::from(labels)) as ArrayRef),
    ])
    .unwrap()
}

fn bench_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target = exe
        .ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "target"))
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir);
    let dir = target.join("bench-data");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The table as a lake writer would leave it: snappy, 64Ki-row row groups.
fn table(n: usize) -> PathBuf {
    let path = bench_dir().join(format!("emb-{n}x{D}.parquet"));
    write_table(&path, 0, n);
    path
}

/// A hive lake of `parts` daily partitions of `per` rows each.
fn lake(parts: usize, per: usize) -> PathBuf {
    let root = bench_dir().join(format!("lake-{parts}x{per}x{D}"));
    for p in 0..parts {
        let dir = root.join(format!("date=2026-11-{:02}", p + 1));
        std::fs::create_dir_all(&dir).unwrap();
        write_table(&dir.join("part-0.parquet"), p * per, per);
    }
    root
}

fn write_table(path: &Path, first: usize, n: usize) {
    if path.exists() {
        return;
    }
    eprintln!("generating {} ...", path.display());
    let tmp = path.with_extension("tmp");
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .set_max_row_group_row_count(Some(64 * 1024))
        .build();
    let f = std::fs::File::create(&tmp).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(f, batch(0, 1).schema(), Some(props)).unwrap();
    let mut start = first;
    while start < first + n {
        let len = GEN_BATCH.min(first + n - start);
        w.write(&batch(start, len)).unwrap();
        start += len;
    }
    w.close().unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A drift run over every partition, from an empty output location.
fn drift_lake(root: &Path, model: &Path, out: &Path) -> usize {
    let _ = std::fs::remove_dir_all(out);
    let spec = reclag_pipelines::drift::DriftSpec::parse(&format!(
        "[source]\nurl = \"{}\"\npartitioning = \"hive:date\"\ngroup = \"label\"\n\
         [model]\nurl = \"{}\"\n[output]\nurl = \"{}\"\n",
        root.display(),
        model.display(),
        out.display()
    ))
    .unwrap();
    let s =
        reclag_pipelines::drift::DriftJob::new(spec, Arc::new(Stores::new(StoreEnv::default())))
            .run()
            .unwrap();
    s.partitions.len()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn decode(path: &Path) -> usize {
    let stores = Stores::new(StoreEnv::default());
    let loc = stores.locate(&path.display().to_string()).unwrap();
    let mut rows = 0;
    for b in ParquetFile::open(&loc).unwrap().read(None).unwrap() {
        rows += std::hint::black_box(b.unwrap()).num_rows();
    }
    rows
}

/// `reclag score` of `input` (a file or a glob) into `out`, keeping `id`, routed by
/// `label`.
fn score(model: &reclag::Model, input: String, out: &Path) -> ScoreSummary {
    score_as(model, input, out, None)
}

fn score_as(
    model: &reclag::Model,
    input: String,
    out: &Path,
    decode_only: Option<reclag_pipelines::ops::score::DecodeOnly>,
) -> ScoreSummary {
    score_job(input, out.display().to_string(), StoreEnv::default())
        .decode_only(decode_only)
        .run(model)
        .unwrap()
}

/// `reclag score --input INPUT --output OUTPUT --group label --keep-columns id`, with
/// the stores configured from `env`.
fn score_job(input: String, output: String, env: StoreEnv) -> ScoreJob {
    ScoreJob::new(Arc::new(Stores::new(env)), vec![input], output)
        .routing(Routing::from_flags(Some("label".into()), None).unwrap())
        .keep_columns(Some(vec!["id".into()]))
}

fn sql_count(rt: &tokio::runtime::Runtime, path: &Path, model: &Path) -> u64 {
    let stores = Arc::new(Stores::new(StoreEnv::default()));
    let job = SqlJob::new(
        stores,
        "SELECT count(*) AS n FROM t WHERE reclag_is_ood('m', embedding, label)",
    )
    .tables(vec![("t".into(), path.display().to_string())])
    .models(vec![("m".into(), model.display().to_string())]);
    let text = rt.block_on(job.run()).unwrap();
    text.lines()
        .filter_map(|l| l.trim_matches(|c| c == '|' || c == ' ').parse().ok())
        .next()
        .expect("a count in the result")
}

fn polars_frames_count(path: &Path, model: &Arc<reclag::Model>) -> u64 {
    use polars::prelude::*;
    let stores = Stores::new(StoreEnv::default());
    let frames =
        reclag_pipelines::ops::frames::Frames::open(&stores, &[path.display().to_string()])
            .unwrap();
    let mut n = 0;
    for frame in frames {
        let kept = frame
            .unwrap()
            .lazy()
            .filter(reclag_udfs::polars::is_ood(
                col("embedding"),
                model,
                Some(col("label")),
            ))
            .select([len()])
            .collect()
            .unwrap();
        n += kept.column("len").unwrap().u32().unwrap().get(0).unwrap() as u64;
    }
    n
}

fn polars_count(path: &Path, model: &Arc<reclag::Model>) -> u64 {
    use polars::prelude::*;
    polars_scan_count(
        path,
        reclag_udfs::polars::is_ood(col("embedding"), model, Some(col("label"))),
    )
}

/// Polars' own streaming `scan_parquet(path).filter(predicate).select(len())`.
fn polars_scan_count(path: &Path, predicate: polars::prelude::Expr) -> u64 {
    use polars::prelude::*;
    let lf = LazyFrame::scan_parquet(
        PlRefPath::new(path.display().to_string().as_str()),
        ScanArgsParquet::default(),
    )
    .unwrap()
    .filter(predicate)
    .select([len()]);
    let df = lf
        .collect_with_engine(Engine::Streaming)
        .unwrap()
        .unwrap_single();
    df.column("len")
        .unwrap()
        .get(0)
        .unwrap()
        .extract::<u64>()
        .unwrap()
}

/// An Arrow IPC stream of generated rows, produced as it is read (nothing is held
/// but the batch being encoded).
struct IpcSource {
    next: usize,
    end: usize,
    buf: Arc<Mutex<Vec<u8>>>,
    pos: usize,
    writer: Option<arrow_ipc::writer::StreamWriter<Shared>>,
}

#[derive(Clone)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Shared {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl IpcSource {
    fn new(n: usize) -> Self {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let schema: SchemaRef = batch(0, 1).schema();
        let writer =
            arrow_ipc::writer::StreamWriter::try_new(Shared(buf.clone()), &schema).unwrap();
        IpcSource {
            next: 0,
            end: n,
            buf,
            pos: 0,
            writer: Some(writer),
        }
    }
}

impl Read for IpcSource {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        loop {
            {
                let buf = self.buf.lock().unwrap();
                if self.pos < buf.len() {
                    let k = out.len().min(buf.len() - self.pos);
                    out[..k].copy_from_slice(&buf[self.pos..self.pos + k]);
                    self.pos += k;
                    return Ok(k);
                }
            }
            self.buf.lock().unwrap().clear();
            self.pos = 0;
            if self.next < self.end {
                let len = GEN_BATCH.min(self.end - self.next);
                let b = batch(self.next, len);
                self.next += len;
                self.writer.as_mut().unwrap().write(&b).unwrap();
            } else if let Some(mut w) = self.writer.take() {
                w.finish().unwrap();
            } else {
                return Ok(0);
            }
        }
    }
}

fn peak_rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Child mode: `reclag score --input - --output -` over `n` streamed rows.
fn child(n: usize, model: &Path) {
    let stores = Stores::new(StoreEnv::default())
        .with_stdio(Box::new(IpcSource::new(n)), Box::new(std::io::sink()));
    let t0 = Instant::now();
    let mut out = Vec::new();
    let m = model.display().to_string();
    let args = [
        "reclag",
        "score",
        "--model",
        &m,
        "--input",
        "-",
        "--output",
        "-",
        "--group",
        "label",
        "--keep-columns",
        "id",
    ];
    reclag_pipelines::cli::run_in(args, stores, &mut out).unwrap();
    println!(
        "rows={n} secs={:.3} peak_rss_kb={}",
        t0.elapsed().as_secs_f64(),
        peak_rss_kb()
    );
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let dir = bench_dir();
    let model_path = dir.join("model-K10-M16-d512.parquet");
    if !model_path.exists() {
        reclag::format::save(&fixture::model(), &model_path).unwrap();
    }
    if let Ok(args) = std::env::var("RECLAG_BENCH_CLI") {
        cli_child(&args);
        return;
    }
    if let Ok(n) = std::env::var("RECLAG_THROUGHPUT_CHILD") {
        child(n.parse().unwrap(), &model_path);
        return;
    }
    let model = reclag::format::load(&model_path).unwrap();
    let n = env_usize("RECLAG_BENCH_ROWS", 1_000_000);
    let runs = env_usize("RECLAG_BENCH_RUNS", 3);
    let path = table(n);
    let out = dir.join("scored.parquet");
    if std::env::var("RECLAG_BENCH_ONLY").is_ok_and(|v| v == "stores") {
        stores_section(&model, &path, n, runs, &out);
        return;
    }
    if std::env::var("RECLAG_BENCH_ONLY").is_ok_and(|v| v == "pvalues") {
        pvalue_section(&path, n, runs, &out);
        return;
    }
    if std::env::var("RECLAG_BENCH_ONLY").is_ok_and(|v| v == "cluster") {
        cluster_section(&path, &model_path, n, runs);
        return;
    }
    if std::env::var("RECLAG_BENCH_ONLY").is_ok_and(|v| v == "python") {
        python_section(&path, &model_path, n, runs);
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let threads = rayon::current_num_threads();
    println!("# Parquet → scores, {n} × {D}, K = 10, M = 16, {threads} threads");
    let (mut t_dec, mut t_score, mut t_sql, mut t_pl) = (vec![], vec![], vec![], vec![]);
    let (mut t_floor, mut t_frames) = (vec![], vec![]);
    let mut counts = (0, 0, 0, 0);
    let shared_model = Arc::new(model.clone());
    for _ in 0..runs {
        let t0 = Instant::now();
        let floor = score_as(
            &model,
            path.display().to_string(),
            &out,
            Some(reclag_pipelines::ops::score::DecodeOnly::AsScore),
        );
        assert_eq!(floor.rows, n as u64);
        t_floor.push(t0.elapsed().as_secs_f64());
        let t0 = Instant::now();
        assert_eq!(decode(&path), n);
        t_dec.push(t0.elapsed().as_secs_f64());
        let t0 = Instant::now();
        counts.0 = score(&model, path.display().to_string(), &out).ood_rows;
        t_score.push(t0.elapsed().as_secs_f64());
        let t0 = Instant::now();
        counts.1 = sql_count(&rt, &path, &model_path);
        t_sql.push(t0.elapsed().as_secs_f64());
        // Before Polars' own scan, whose gigabytes of allocation slow whatever follows.
        let t0 = Instant::now();
        counts.3 = polars_frames_count(&path, &shared_model);
        t_frames.push(t0.elapsed().as_secs_f64());
        let t0 = Instant::now();
        counts.2 = polars_count(&path, &shared_model);
        t_pl.push(t0.elapsed().as_secs_f64());
    }
    assert_eq!(
        counts.0, counts.1,
        "SQL and score disagree on the OOD count"
    );
    assert_eq!(
        counts.0, counts.2,
        "Polars and score disagree on the OOD count"
    );
    assert_eq!(
        counts.0, counts.3,
        "Polars on reclag's frames and score disagree on the OOD count"
    );
    let rate = |t: f64| n as f64 / t;
    let (dec, sc, sq) = (median(t_dec), median(t_score), median(t_sql));
    let floor = median(t_floor);
    println!("| step | median s | rows/s | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| decode as score (same reader, pages in place, checksum) | {floor:.2} | {:.0} | 1.00 |",
        rate(floor)
    );
    println!(
        "| decode to Arrow (same reader, every batch discarded) | {dec:.2} | {:.0} | {:.2} of decode as score |",
        rate(dec),
        floor / dec
    );
    println!(
        "| reclag score Parquet → Parquet | {sc:.2} | {:.0} | {:.2} of decode as score, {:.2} of decode to Arrow |",
        rate(sc),
        floor / sc,
        dec / sc
    );
    println!(
        "| SQL count(*) WHERE reclag_is_ood | {sq:.2} | {:.0} | {:.2} of score |",
        rate(sq),
        sc / sq
    );
    let (pl, fr) = (median(t_pl), median(t_frames));
    println!(
        "| Polars filter(is_ood) count on reclag's frames (`reclag filter`'s path) | {fr:.2} | {:.0} | {:.2} of SQL |",
        rate(fr),
        sq / fr
    );
    println!(
        "| Polars scan_parquet → filter(is_ood) count, streaming | {pl:.2} | {:.0} | {:.2} of SQL |",
        rate(pl),
        sq / pl
    );
    println!("(OOD rows: {})", counts.0);

    let parts = env_usize("RECLAG_BENCH_LAKE_PARTS", 10);
    let per = env_usize("RECLAG_BENCH_LAKE_ROWS", 100_000);
    let root = lake(parts, per);
    let (mut t_ls, mut t_dr, mut t_lq) = (vec![], vec![], vec![]);
    for _ in 0..runs {
        let t0 = Instant::now();
        let lake_glob = format!("{}/date=*/*.parquet", root.display());
        assert_eq!(score(&model, lake_glob, &out).rows, (parts * per) as u64);
        t_ls.push(t0.elapsed().as_secs_f64());
        let t0 = Instant::now();
        assert_eq!(
            drift_lake(&root, &model_path, &dir.join("drift-out")),
            parts
        );
        t_dr.push(t0.elapsed().as_secs_f64());
        let t0 = Instant::now();
        assert_eq!(
            sql_count(&rt, &root, &model_path),
            parts as u64 * per as u64 / 10,
            "the lake's OOD rows: a tenth of each partition"
        );
        t_lq.push(t0.elapsed().as_secs_f64());
    }
    let (ls, dr, lq) = (median(t_ls), median(t_dr), median(t_lq));
    let lrate = |t: f64| (parts * per) as f64 / t;
    println!("\n# Drift run vs score over a lake of {parts} partitions × {per} rows × {D}");
    println!("| step | median s | rows/s | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| reclag score over the lake (keep id) | {ls:.2} | {:.0} | 1.00 |",
        lrate(ls)
    );
    println!(
        "| reclag drift run (metrics, worst rows, report) | {dr:.2} | {:.0} | {:.2}× the time of score (target ≤ 1.25) |",
        lrate(dr),
        dr / ls
    );
    println!(
        "| SQL count(*) WHERE reclag_is_ood over the lake as a hive table | {lq:.2} | {:.0} | {:.2} of score's rows/s |",
        lrate(lq),
        ls / lq
    );

    pvalue_section(&path, n, runs, &out);

    if std::env::var("RECLAG_BENCH_STORES").map_or(true, |v| v != "0") {
        stores_section(&model, &path, n, runs, &out);
    }

    let sizes: Vec<usize> = std::env::var("RECLAG_BENCH_RSS_ROWS")
        .unwrap_or_else(|_| "1000000,10000000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    println!("\n# Peak RSS of `reclag score --input - --output -` (streamed, d = {D})");
    println!("| rows | input bytes | s | rows/s | peak RSS MiB |");
    println!("|---|---|---|---|---|");
    for rows in sizes {
        let o = std::process::Command::new(std::env::current_exe().unwrap())
            .env("RECLAG_THROUGHPUT_CHILD", rows.to_string())
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let line = String::from_utf8_lossy(&o.stdout).to_string();
        let field = |k: &str| -> f64 {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(k))
                .and_then(|v| v.parse().ok())
                .unwrap_or(f64::NAN)
        };
        let (secs, kb) = (field("secs="), field("peak_rss_kb="));
        println!(
            "| {rows} | {:.1} GiB | {secs:.1} | {:.0} | {:.0} |",
            (rows * D * 4) as f64 / (1u64 << 30) as f64,
            rows as f64 / secs,
            kb / 1024.0
        );
    }
}

/// p-values on the main table: the column's cost inside `reclag score`, and the cost
/// of deciding by false-discovery rate in `reclag filter`.
fn pvalue_section(table: &Path, n: usize, runs: usize, out: &Path) {
    use reclag_pipelines::ops::filter::{FilterJob, Keep};
    let calibrated = fixture::calibrated_model();
    let plain = fixture::without_calibration(&calibrated);
    let input = table.display().to_string();
    let (mut t_plain, mut t_p, mut t_keep, mut t_fdr) = (vec![], vec![], vec![], vec![]);
    let filtered = out.with_file_name("filtered.parquet");
    let filter = |fdr: Option<f64>| {
        let stores = Arc::new(Stores::new(StoreEnv::default()));
        FilterJob::new(
            stores,
            vec![input.clone()],
            filtered.display().to_string(),
            Keep::Id,
        )
        .group(Some("label".into()))
        .fdr(fdr)
    };
    let shared = Arc::new(calibrated.clone());
    let (mut kept_keep, mut kept_fdr) = (0, 0);
    for run in 0..runs {
        // Alternating which goes first, so neither always follows the filter's writes.
        let mut pair = [(&plain, &mut t_plain), (&calibrated, &mut t_p)];
        if run % 2 == 1 {
            pair.reverse();
        }
        let mut ood = vec![];
        for (m, t) in pair {
            let t0 = Instant::now();
            let s = score(m, input.clone(), out);
            t.push(t0.elapsed().as_secs_f64());
            assert_eq!(s.p_values, m.calibration().is_some());
            ood.push(s.ood_rows);
        }
        assert_eq!(ood[0], ood[1]);
        let t0 = Instant::now();
        kept_keep = filter(None).run(&shared).unwrap().rows_kept;
        t_keep.push(t0.elapsed().as_secs_f64());
        let t0 = Instant::now();
        kept_fdr = filter(Some(0.1)).run(&shared).unwrap().rows_kept;
        t_fdr.push(t0.elapsed().as_secs_f64());
    }
    let _ = std::fs::remove_file(&filtered);
    let (t_plain_all, t_p_all) = (t_plain.clone(), t_p.clone());
    let (pl, pv, kp, fd) = (median(t_plain), median(t_p), median(t_keep), median(t_fdr));
    let rate = |t: f64| n as f64 / t;
    println!("\n# p-values, {n} × {D}, routed by label");
    println!("| step | median s | rows/s | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| reclag score, model without calibration scores (no p-value column) | {pl:.2} | {:.0} | 1.00 |",
        rate(pl)
    );
    println!(
        "| reclag score with reclag_p_value | {pv:.2} | {:.0} | {:.3}× the time (target ≤ 1.05) |",
        rate(pv),
        pv / pl
    );
    println!(
        "| reclag filter --keep id (τ decision, writes kept rows) | {kp:.2} | {:.0} | 1.00 |",
        rate(kp)
    );
    println!(
        "| reclag filter --keep id --fdr 0.1 (two passes) | {fd:.2} | {:.0} | {:.2}× the time of --keep id |",
        rate(fd),
        fd / kp
    );
    println!("(rows kept: {kept_keep} by τ, {kept_fdr} by Benjamini–Hochberg at 0.1)");
    println!("(score runs, s: without p-values {t_plain_all:.2?}; with {t_p_all:.2?})");
}

/// `reclag score` keeping `id` from each emulator to itself, against the same from
/// local disk to local disk in the same run.
fn stores_section(model: &reclag::Model, table: &Path, n: usize, runs: usize, out: &Path) {
    use emulators::{Emulator, FaultProxy, Kind};
    println!("\n# reclag score store → store, {n} × {D} (keep id), against local disk");
    println!("| store | local s | store s | store / local | requests per run |");
    println!("|---|---|---|---|---|");
    let bytes = bytes::Bytes::from(std::fs::read(table).unwrap());
    for kind in [Kind::S3, Kind::Azure] {
        let Some(emu) = Emulator::start(kind) else {
            println!("| {kind:?} | skipped: not installed | | | |");
            continue;
        };
        emu.bucket("bench");
        let stores = Stores::new(emu.env());
        let input = emu.url("bench/emb.parquet");
        let put = |url: &str, b: bytes::Bytes| {
            let loc = stores.locate(url).unwrap();
            reclag_pipelines::store::block_on(async {
                use parquet::arrow::async_writer::AsyncFileWriter;
                let mut up =
                    reclag_pipelines::upload::Upload::new(loc.store.clone(), loc.key.clone());
                for part in b.chunks(8 << 20) {
                    up.write(b.slice_ref(part)).await.unwrap();
                }
                up.complete().await.unwrap();
            });
        };
        put(&input, bytes.clone());
        let (mut t_local, mut t_store) = (vec![], vec![]);
        for _ in 0..runs {
            let t0 = Instant::now();
            let local = score_job(
                table.display().to_string(),
                out.display().to_string(),
                StoreEnv::default(),
            )
            .run(model)
            .unwrap();
            t_local.push(t0.elapsed().as_secs_f64());
            let t0 = Instant::now();
            let remote = score_job(input.clone(), emu.url("bench/scored.parquet"), emu.env())
                .run(model)
                .unwrap();
            t_store.push(t0.elapsed().as_secs_f64());
            assert_eq!(
                local.ood_rows, remote.ood_rows,
                "{kind:?}: the store run disagrees"
            );
        }
        let proxy = FaultProxy::start(&emu, vec![]);
        score_job(
            input.clone(),
            emu.url("bench/counted.parquet"),
            proxy.env(&emu, &[]),
        )
        .run(model)
        .unwrap();
        let requests = proxy.requests.lock().unwrap().len();
        let (l, r) = (median(t_local), median(t_store));
        println!(
            "| {} ({kind:?}) | {l:.2} | {r:.2} | {:.1}× | {requests} |",
            emu.url("bench/"),
            r / l
        );
    }
}

/// `RECLAG_BENCH_CLI`: this binary run as the `reclag` CLI with the JSON argument
/// list (a cluster process or a client, each a process of its own).
fn cli_child(args: &str) {
    let args: Vec<String> = serde_json::from_str(args).unwrap();
    let code = reclag_pipelines::cli::main_with(args);
    std::process::exit(if code == std::process::ExitCode::SUCCESS {
        0
    } else {
        1
    });
}

/// This binary re-run as `reclag ARGS`.
fn reclag(args: &[String]) -> std::process::Command {
    let mut argv = vec!["reclag".to_string()];
    argv.extend_from_slice(args);
    let mut c = std::process::Command::new(std::env::current_exe().unwrap());
    c.env("RECLAG_BENCH_CLI", serde_json::to_string(&argv).unwrap());
    c
}

/// `reclag sql --cluster` on a scheduler and two one-core executors (the machine's
/// two cores), with the fast list reader on the executors and with DataFusion's
/// Parquet scan (`RECLAG_FAST_DECODE=0` on the client ships the listing table),
/// against local `reclag sql`; each a client process, the same query and table.
fn cluster_section(path: &Path, model: &Path, n: usize, runs: usize) {
    let dir = bench_dir().join("cluster");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cluster = cluster_procs::Cluster::start(&dir, reclag);
    let query = "SELECT count(*) AS n FROM t WHERE reclag_is_ood('m', embedding, label)";
    let client = |on_cluster: bool, fast: bool| -> (f64, String) {
        let mut a = vec![
            "sql".to_string(),
            "--table".into(),
            format!("t={}", path.display()),
            "--model".into(),
            format!("m={}", model.display()),
            query.into(),
        ];
        if on_cluster {
            a.splice(1..1, ["--cluster".to_string(), cluster.url.clone()]);
        }
        let mut c = reclag(&a);
        if !fast {
            c.env("RECLAG_FAST_DECODE", "0");
        }
        let t0 = Instant::now();
        let out = c.output().unwrap();
        let secs = t0.elapsed().as_secs_f64();
        assert!(
            out.status.success(),
            "{a:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (secs, String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (mut local, mut fast, mut df) = (vec![], vec![], vec![]);
    let mut answers = vec![];
    for _ in 0..runs {
        for (times, on_cluster, fast_scan) in [
            (&mut local, false, true),
            (&mut fast, true, true),
            (&mut df, true, false),
        ] {
            let (secs, out) = client(on_cluster, fast_scan);
            times.push(secs);
            answers.push(out);
        }
    }
    assert!(
        answers.windows(2).all(|w| w[0] == w[1]),
        "every run gives the same count: {answers:?}"
    );
    drop(cluster);
    let (l, f, d) = (median(local), median(fast), median(df));
    println!(
        "# reclag sql on a Ballista cluster (scheduler + 2 executors × 1 core, loopback), {n} × {D}, median of {runs}"
    );
    println!("| path | s | rows/s | vs local |");
    println!("|---|---|---|---|");
    for (name, s) in [
        ("local `reclag sql` (fast list reader)", l),
        ("cluster, fast list reader on the executors", f),
        ("cluster, DataFusion's Parquet scan on the executors", d),
    ] {
        println!("| {name} | {s:.2} | {:.0} | {:.2}× |", n as f64 / s, s / l);
    }
    println!(
        "fast scan vs DataFusion's scan on the cluster: {:.2}×",
        d / f
    );
}

/// Runs `benches/python_plugin.py MODE TABLE MODEL` in `python` and returns its JSON.
fn python_child(python: &str, mode: &str, path: &Path, model: &Path) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/python_plugin.py");
    let out = std::process::Command::new(python)
        .arg(&script)
        .args([
            mode,
            &path.display().to_string(),
            &model.display().to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{python} {script:?} {mode}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// What `Model.score` does with a table in memory: per batch, the embedding rows, the
/// groups, the routed scores with dynamics, p-values where the model has calibration
/// scores, and the output arrays. Returns the OOD count.
fn kernel_in_memory(model: &reclag::Model, batches: &[RecordBatch]) -> u64 {
    let mut ood = 0;
    for b in batches {
        let emb = b.schema().index_of("embedding").unwrap();
        let lab = b.schema().index_of("label").unwrap();
        let rows =
            reclag::arrow::embedding_rows(b.column(emb).as_ref(), "embedding", Some(model.dim()))
                .unwrap();
        let groups = reclag::arrow::resolve_groups(model, b.column(lab).as_ref(), "label").unwrap();
        let mut out = reclag::ScoreOutput::default();
        model
            .score_routed(
                &rows,
                Some(&groups),
                reclag::Route::Best,
                reclag::Work::WithDynamics,
                &mut out,
            )
            .unwrap();
        if model.calibration().is_some() {
            let mut p = Vec::new();
            model
                .p_values_into(&out, Some(&groups), reclag::Route::Best, &mut p)
                .unwrap();
            std::hint::black_box(reclag::arrow::p_value_array(p));
        }
        let a = reclag::arrow::output_arrays(out);
        ood += a
            .is_ood
            .as_any()
            .downcast_ref::<arrow_array::BooleanArray>()
            .unwrap()
            .true_count() as u64;
    }
    ood
}

/// Polars' streaming scan with a filter that needs the embedding decoded and no
/// scoring: the reader's share of [`polars_count`].
fn polars_floor(path: &Path) -> u64 {
    use polars::prelude::*;
    polars_scan_count(
        path,
        col("embedding")
            .is_not_null()
            .and(col("label").gt_eq(lit(0))),
    )
}

fn python_section(path: &Path, model_path: &Path, n: usize, runs: usize) {
    let Ok(python) = std::env::var("RECLAG_BENCH_PYTHON") else {
        println!(
            "# python: skipped: set RECLAG_BENCH_PYTHON to an interpreter with the reclag wheel \
             (maturin build --release -m udfs/python/Cargo.toml) and polars, pyarrow installed"
        );
        return;
    };
    let model = Arc::new(reclag::format::load(model_path).unwrap());
    // The table in memory as pyarrow reads it: one batch per 64Ki-row row group.
    let file = std::fs::File::open(path).unwrap();
    let batches: Vec<RecordBatch> =
        datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .with_batch_size(64 * 1024)
            .build()
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
    let df = {
        use polars::prelude::*;
        ParquetReader::new(std::fs::File::open(path).unwrap())
            .finish()
            .unwrap()
    };
    let (mut t_rust, mut t_frames, mut t_py, mut t_kernel, mut t_pyscore) =
        (vec![], vec![], vec![], vec![], vec![]);
    let (mut t_floor, mut t_pyfloor, mut t_df, mut t_pydf) = (vec![], vec![], vec![], vec![]);
    let mut counts = vec![];
    let mut all = vec![];
    for _ in 0..runs {
        let t0 = Instant::now();
        all.push(polars_floor(path));
        t_floor.push(t0.elapsed().as_secs_f64());
        let r = python_child(&python, "floor", path, model_path);
        t_pyfloor.push(r["seconds"].as_f64().unwrap());
        all.push(r["rows"].as_u64().unwrap());
        let t0 = Instant::now();
        {
            use polars::prelude::*;
            let kept = df
                .clone()
                .lazy()
                .filter(reclag_udfs::polars::is_ood(
                    col("embedding"),
                    &model,
                    Some(col("label")),
                ))
                .collect()
                .unwrap();
            counts.push(kept.height() as u64);
        }
        t_df.push(t0.elapsed().as_secs_f64());
        let r = python_child(&python, "frame", path, model_path);
        t_pydf.push(r["seconds"].as_f64().unwrap());
        counts.push(r["rows"].as_u64().unwrap());
        let t0 = Instant::now();
        counts.push(polars_count(path, &model));
        t_rust.push(t0.elapsed().as_secs_f64());
        let r = python_child(&python, "count", path, model_path);
        t_py.push(r["seconds"].as_f64().unwrap());
        counts.push(r["rows"].as_u64().unwrap());
        let t0 = Instant::now();
        counts.push(polars_frames_count(path, &model));
        t_frames.push(t0.elapsed().as_secs_f64());
        let t0 = Instant::now();
        counts.push(kernel_in_memory(&model, &batches));
        t_kernel.push(t0.elapsed().as_secs_f64());
        let r = python_child(&python, "score", path, model_path);
        t_pyscore.push(r["seconds"].as_f64().unwrap());
        counts.push(r["ood"].as_u64().unwrap());
    }
    assert!(
        counts.windows(2).all(|w| w[0] == w[1]),
        "every path counts the same OOD rows: {counts:?}"
    );
    assert!(all.iter().all(|&r| r == n as u64), "{all:?}");
    let (rs, py, fr) = (median(t_rust), median(t_py), median(t_frames));
    let (fl, pfl, dfr, pdf) = (
        median(t_floor),
        median(t_pyfloor),
        median(t_df),
        median(t_pydf),
    );
    let (k, ps) = (median(t_kernel), median(t_pyscore));
    let rate = |t: f64| n as f64 / t;
    println!("# The Python package, {n} × {D}, K = 10, M = 16, median of {runs}");
    println!("| path | median s | rows/s | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| Rust: Polars scan_parquet → filter(is_ood) → len, `reclag_udfs::polars` | {rs:.2} | {:.0} | 1.00 |",
        rate(rs)
    );
    println!(
        "| Python: the same with `reclag.polars.is_ood` (plugin) | {py:.2} | {:.0} | {:.3}× the time of Rust |",
        rate(py),
        py / rs
    );
    println!(
        "| Rust: the same scan, filter(embedding not null) (Polars' reader alone) | {fl:.2} | {:.0} | {:.2}× the time of Rust |",
        rate(fl),
        fl / rs
    );
    println!(
        "| Python: the same scan, filter(embedding not null) | {pfl:.2} | {:.0} | {:.2}× the time of Rust's reader alone |",
        rate(pfl),
        pfl / fl
    );
    println!(
        "| Rust: DataFrame in memory, filter(is_ood) | {dfr:.2} | {:.0} | 1.00 |",
        rate(dfr)
    );
    println!(
        "| Python: DataFrame in memory, filter(reclag.polars.is_ood) | {pdf:.2} | {:.0} | {:.3}× the time of Rust |",
        rate(pdf),
        pdf / dfr
    );
    println!(
        "| `reclag filter`'s path (Polars on reclag's frames), count | {fr:.2} | {:.0} | {:.2}× the time of Rust |",
        rate(fr),
        fr / rs
    );
    println!(
        "| Rust: the core calls of `Model.score` on the table in memory | {k:.2} | {:.0} | 1.00 |",
        rate(k)
    );
    println!(
        "| Python: `Model.score(table)` on a pyarrow table in memory | {ps:.2} | {:.0} | {:.3}× the time of Rust |",
        rate(ps),
        ps / k
    );
    println!("(OOD rows: {})", counts[0]);
}
