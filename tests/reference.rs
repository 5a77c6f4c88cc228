//! End to end on the shared real suites: `reclag train` then `reclag eval`, compared
//! with `../shared/data/REFERENCE.md`: the paper recipe (`--recipe paper`, routed by
//! logits) against its table, and the default whitened recipe (best routing, no
//! labels or logits at scoring time) against its own.

use std::collections::HashMap;

use crate::common::{cli_ok, shared};

/// `REFERENCE.md` AUROCs for one recipe section (`## Paper recipe`, `## Whitened
/// recipe`) and suite (`### image_fmnist`): (ood_set, detector) → AUROC. The
/// recipe's own column (`reclag` or `whitened`) is filed under `reclag`; a cell reads
/// `AUROC [(range)] / FPR95`; the mean row is skipped.
fn reference(recipe: &str, suite: &str) -> HashMap<(String, String), f64> {
    let text = std::fs::read_to_string(shared("data/REFERENCE.md").unwrap()).unwrap();
    let mut out = HashMap::new();
    let (mut in_recipe, mut in_suite) = (false, false);
    let mut header: Vec<String> = Vec::new();
    for line in text.lines() {
        if let Some(h) = line.strip_prefix("### ") {
            in_suite = in_recipe && h.split_whitespace().next() == Some(suite);
            header.clear();
            continue;
        }
        if let Some(h) = line.strip_prefix("## ") {
            in_recipe = h.to_lowercase().starts_with(recipe);
            in_suite = false;
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
            header = cells
                .iter()
                .map(|h| match h.as_str() {
                    "whitened" => "reclag".to_string(),
                    o => o.to_string(),
                })
                .collect();
            continue;
        }
        if cells[0].starts_with("---") || cells[0].starts_with("**") {
            continue;
        }
        for (det, cell) in header.iter().zip(&cells).skip(1) {
            let first = cell.split(['/', ' ']).next().unwrap();
            let auroc: f64 = first.parse().unwrap_or_else(|_| panic!("cell '{cell}'"));
            out.insert((cells[0].clone(), det.clone()), auroc);
        }
    }
    assert!(
        !out.is_empty(),
        "no {recipe} table for {suite} in REFERENCE.md"
    );
    out
}

/// Trains with `train_flags`, evaluates with `eval_flags`, and returns
/// (ood_set, detector) → AUROC with the reference for the same cells.
fn run(
    suite: &str,
    recipe: &str,
    train_flags: &[&str],
    eval_flags: &[&str],
    baselines: &str,
) -> Option<Vec<(String, String, f64, f64)>> {
    let dir = shared(&format!("data/{suite}"))?;
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model.parquet");
    let p = |f: &str| dir.join(f).display().to_string();
    let train = p("id_train.parquet");
    let mut args = vec![
        "train",
        "--input",
        &train,
        "--label",
        "label",
        "--output",
        model.to_str().unwrap(),
    ];
    args.extend(train_flags);
    println!("{}", cli_ok(&args));
    let reference = reference(recipe, suite);
    let mut sets: Vec<String> = reference.keys().map(|(s, _)| s.clone()).collect();
    sets.sort();
    sets.dedup();
    let oods: Vec<String> = sets
        .iter()
        .map(|s| format!("{s}={}", p(&format!("ood_{s}.parquet"))))
        .collect();
    let id_test = p("id_test.parquet");
    let mut args = vec!["eval", "--model", model.to_str().unwrap(), "--id", &id_test];
    for o in &oods {
        args.extend(["--ood", o.as_str()]);
    }
    args.extend(eval_flags);
    args.extend([
        "--train",
        &train,
        "--baselines",
        baselines,
        "--format",
        "json",
    ]);
    let json: serde_json::Value = serde_json::from_str(&cli_ok(&args)).unwrap();
    let mut rows = Vec::new();
    for r in json["results"].as_array().unwrap() {
        let set = r["ood_set"].as_str().unwrap().to_string();
        let det = r["detector"].as_str().unwrap().to_string();
        let got = r["auroc"].as_f64().unwrap();
        assert!(r["n_id"].as_u64().unwrap() > 0 && r["n_ood"].as_u64().unwrap() > 0);
        for k in ["fpr95", "aupr_in", "aupr_out"] {
            let v = r[k].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&v), "{k} = {v}");
        }
        let want = reference[&(set.clone(), det.clone())];
        println!(
            "{suite} {recipe} {set:<24} {det:<12} auroc {got:.4} reference {want:.3} diff {:+.4}",
            got - want
        );
        rows.push((set, det, got, want));
    }
    assert_eq!(rows.len(), sets.len() * (1 + baselines.split(',').count()));
    Some(rows)
}

/// The paper recipe: RecLag within 0.03 of the 5-seed mean, every baseline (computed
/// by the same eval path) within REFERENCE.md's rounding.
fn paper(suite: &str) {
    let Some(rows) = run(
        suite,
        "paper",
        &["--recipe", "paper"],
        &["--group-from-logits", "logits"],
        "he,she,mahalanobis,knn,msp,energy",
    ) else {
        return;
    };
    let failures: Vec<String> = rows
        .iter()
        .filter(|(_, det, got, want)| {
            (got - want).abs() > if det == "reclag" { 0.03 } else { 0.002 }
        })
        .map(|(set, det, got, want)| format!("{set}/{det}: {got:.4} vs {want:.3}"))
        .collect();
    assert!(failures.is_empty(), "AUROC outside tolerance: {failures:?}");
}

/// The default recipe, rows routed by best margin: each OOD set within 0.03 of the
/// 3-seed mean, and the mean over the sets at least the best baseline's minus 0.01.
fn whitened(suite: &str) {
    let Some(rows) = run(suite, "whitened", &[], &[], "knn,mahalanobis") else {
        return;
    };
    let mean = |det: &str| {
        let v: Vec<f64> = rows.iter().filter(|r| r.1 == det).map(|r| r.2).collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    let failures: Vec<String> = rows
        .iter()
        .filter(|(_, det, got, want)| det == "reclag" && (got - want).abs() > 0.03)
        .map(|(set, _, got, want)| format!("{set}: {got:.4} vs {want:.3}"))
        .collect();
    assert!(
        failures.is_empty(),
        "whitened AUROC outside 0.03: {failures:?}"
    );
    let best = mean("knn").max(mean("mahalanobis"));
    println!(
        "{suite} mean AUROC: whitened {:.4}, knn {:.4}, mahalanobis {:.4}",
        mean("reclag"),
        mean("knn"),
        mean("mahalanobis")
    );
    assert!(
        mean("reclag") >= best - 0.01,
        "{suite}: whitened mean AUROC {:.4} below the best baseline's {best:.4} − 0.01",
        mean("reclag")
    );
}

#[test]
fn image_fmnist_paper_recipe_matches_reference() {
    paper("image_fmnist");
}

#[test]
fn text_wordnet_paper_recipe_matches_reference() {
    paper("text_wordnet");
}

#[test]
fn image_fmnist_whitened_recipe_matches_reference() {
    whitened("image_fmnist");
}

#[test]
fn text_wordnet_whitened_recipe_matches_reference() {
    whitened("text_wordnet");
}
