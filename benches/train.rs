//! `reclag train` on image_fmnist `id_train` (60,000 × 128, 10 groups, 50 epochs)
//! against the numpy implementation of §5 in `benches/peers/numpy_reclag.py`, run
//! alternately in the same process tree so both see the same machine state.
//!
//!     cargo bench --bench train            # needs ../shared/data and python3 + numpy + pyarrow
//!
//! Prints a Markdown table of medians over `RECLAG_BENCH_RUNS` (default 3) runs.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use reclag::TrainParams;
use reclag_pipelines::ops::train::TrainJob;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; there are no filters to honour.
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let data = root.join("../shared/data/image_fmnist/id_train.parquet");
    if !data.exists() {
        println!("SKIP: {} not found", data.display());
        return;
    }
    let runs: usize = std::env::var("RECLAG_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let peer = root.join("benches/peers/numpy_reclag.py");
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let tmp = tempfile::tempdir().unwrap();
    let model_path = tmp.path().join("model.parquet");
    let job = TrainJob::new(
        Default::default(),
        vec![data.display().to_string()],
        model_path.display().to_string(),
    )
    .label(Some("label".into()))
    .params(TrainParams::paper());
    let (mut r_total, mut r_fit, mut p_total, mut p_fit) = (vec![], vec![], vec![], vec![]);
    let mut peer_error = None;
    for _ in 0..runs {
        let t0 = Instant::now();
        let (set, source) = job.collect().unwrap();
        let t1 = Instant::now();
        let model = job
            .training_params()
            .clone()
            .check()
            .unwrap()
            .fit(&set, &source, &reclag::NoProgress)
            .unwrap();
        r_fit.push(t1.elapsed().as_secs_f64());
        reclag::format::save(&model, &model_path).unwrap();
        r_total.push(t0.elapsed().as_secs_f64());

        let t0 = Instant::now();
        match Command::new(&python)
            .arg(&peer)
            .arg("--train")
            .arg(&data)
            .output()
        {
            Ok(o) if o.status.success() => {
                p_total.push(t0.elapsed().as_secs_f64());
                let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
                p_fit.push(v["fit_seconds"].as_f64().unwrap());
            }
            Ok(o) => {
                peer_error = Some(
                    String::from_utf8_lossy(&o.stderr)
                        .lines()
                        .last()
                        .unwrap_or("")
                        .to_string(),
                )
            }
            Err(e) => peer_error = Some(e.to_string()),
        }
    }
    println!("| what | reclag (s) | numpy peer (s) | ratio |");
    println!("|---|---|---|---|");
    if let Some(e) = peer_error {
        println!("| fit only | {:.2} | skipped: {e} | - |", median(r_fit));
        return;
    }
    let (rf, pf, rt, pt) = (
        median(r_fit),
        median(p_fit),
        median(r_total),
        median(p_total),
    );
    println!(
        "| fit only (50 epochs, 10 groups) | {rf:.2} | {pf:.2} | {:.1}x |",
        pf / rf
    );
    println!(
        "| whole job (read + fit + write; numpy: process incl. imports) | {rt:.2} | {pt:.2} | {:.1}x |",
        pt / rt
    );
    println!(
        "(medians of {runs} alternating runs; {} cores)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
}
