//! End to end on the shared real suites: `reclag train` then `reclag eval`, compared
//! with `../shared/data/REFERENCE.md`.

use std::collections::HashMap;

use crate::common::{cli_ok, shared};

/// `REFERENCE.md` cells for one suite: (ood_set, detector) → AUROC.
fn reference(suite: &str) -> HashMap<(String, String), f64> {
    let text = std::fs::read_to_string(shared("data/REFERENCE.md").unwrap()).unwrap();
    let mut out = HashMap::new();
    let mut in_suite = false;
    let mut header: Vec<String> = Vec::new();
    for line in text.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            in_suite = h.trim() == suite;
            header.clear();
            continue;
        }
        if !in_suite || !line.starts_with('|') {
            continue;
        }
        let cells: Vec<String> = line
            .trim_matches('|')
            .split('|')
            .map(|c| c.trim().to_string())
            .collect();
        if header.is_empty() {
            header = cells;
            continue;
        }
        if cells[0].starts_with("---") {
            continue;
        }
        for (det, cell) in header.iter().zip(&cells).skip(1) {
            let auroc: f64 = cell.split('/').next().unwrap().trim().parse().unwrap();
            out.insert((cells[0].clone(), det.clone()), auroc);
        }
    }
    assert!(!out.is_empty(), "no table for {suite} in REFERENCE.md");
    out
}

/// RecLag AUROCs where this implementation sits above REFERENCE.md by more than the
/// 0.03 tolerance with the spec defaults, and by how much at most we accept.
/// Evidence (see the issue note): over seeds 0–3 this code gives font_letters
/// 0.831–0.852 and world_script_glyphs 0.863–0.880; an independent numpy reading of
/// §5 (benches/peers/numpy_reclag.py) gives 0.824–0.846 and 0.858–0.874; REFERENCE.md
/// has 0.805 and 0.843. Every baseline, computed by the same eval path, matches
/// REFERENCE.md to 0.002 (asserted below), so the gap is in the trainer's reference
/// run, not in the data, routing or metrics.
const KNOWN_GAPS: &[(&str, &str, f64)] = &[
    ("image_fmnist", "font_letters", 0.06),
    ("image_fmnist", "world_script_glyphs", 0.05),
];

fn run_suite(suite: &str, baselines: &str) {
    let Some(dir) = shared(&format!("data/{suite}")) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model.parquet");
    let p = |f: &str| dir.join(f).display().to_string();
    cli_ok(&[
        "train",
        "--input",
        &p("id_train.parquet"),
        "--embedding",
        "embedding",
        "--label",
        "label",
        "--output",
        model.to_str().unwrap(),
    ]);
    let reference = reference(suite);
    let sets: Vec<String> = {
        let mut v: Vec<String> = reference.keys().map(|(s, _)| s.clone()).collect();
        v.sort();
        v.dedup();
        v
    };
    let oods: Vec<String> = sets
        .iter()
        .map(|s| format!("{s}={}", p(&format!("ood_{s}.parquet"))))
        .collect();
    let id_test = p("id_test.parquet");
    let mut args = vec!["eval", "--model", model.to_str().unwrap(), "--id", &id_test];
    let train = p("id_train.parquet");
    for o in &oods {
        args.extend(["--ood", o.as_str()]);
    }
    args.extend([
        "--group-from-logits",
        "logits",
        "--train",
        &train,
        "--baselines",
        baselines,
        "--format",
        "json",
    ]);
    let out = cli_ok(&args);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let results = json["results"].as_array().unwrap();
    let mut failures = Vec::new();
    let mut checked = 0;
    for r in results {
        let set = r["ood_set"].as_str().unwrap();
        let det = r["detector"].as_str().unwrap();
        let got = r["auroc"].as_f64().unwrap();
        let want = reference[&(set.to_string(), det.to_string())];
        let tol = if det == "reclag" {
            KNOWN_GAPS
                .iter()
                .find(|g| g.0 == suite && g.1 == set)
                .map_or(0.03, |g| g.2)
        } else {
            // REFERENCE.md rounds to 3 decimals; baselines are deterministic.
            0.002
        };
        println!(
            "{suite} {set:<24} {det:<12} auroc {got:.4} reference {want:.3} diff {:+.4} (tol {tol})",
            got - want
        );
        assert!(r["n_id"].as_u64().unwrap() > 0 && r["n_ood"].as_u64().unwrap() > 0);
        for k in ["fpr95", "aupr_in", "aupr_out"] {
            let v = r[k].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&v), "{k} = {v}");
        }
        if (got - want).abs() > tol {
            failures.push(format!("{set}/{det}: {got:.4} vs {want:.3}"));
        }
        checked += 1;
    }
    assert_eq!(checked, sets.len() * (1 + baselines.split(',').count()));
    assert!(failures.is_empty(), "AUROC outside tolerance: {failures:?}");
}

#[test]
fn image_fmnist_matches_reference() {
    run_suite("image_fmnist", "he,she,mahalanobis,knn,msp,energy");
}

#[test]
fn text_wordnet_matches_reference() {
    run_suite("text_wordnet", "he,she,mahalanobis,knn,msp,energy");
}
