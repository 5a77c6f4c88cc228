//! §11 in the core: the calibration scores a model keeps, re-thresholding from new ID
//! rows, p-values of scored rows, and the model file that carries them.

use reclag::conformal::{Against, CalibrationEnergies};
use reclag::model::{CalibratedOn, Group, GroupKey, ModelParts, Provenance};
use reclag::rng::Rng;
use reclag::{
    Model, Normalize, Route, Rows, ScoreOutput, TrainParams, TrainingSet, Whitening, Work,
};

use crate::common::{json, mat, near, vecf};

/// The golden file's memories, whitening and β, re-thresholded on its calibration
/// rows through the model's own path, give its `τ`, its best-route calibration scores
/// and each group's own margins.
#[test]
fn calibration_scores_reproduce_the_golden_file() {
    let Some(g) = json("spec/golden/whitened.json") else {
        return;
    };
    let d = g["d"].as_u64().unwrap() as usize;
    let k = g["groups"].as_u64().unwrap() as usize;
    let x = mat(&g["X"]);
    let label: Vec<u32> = g["label"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let wh = Whitening::new(d, vecf(&g["mu"]), mat(&g["W"]).concat()).unwrap();
    let groups = (0..k)
        .map(|c| {
            let xi = mat(&g["memories"][c.to_string()]["after_25_iterations"]).concat();
            Group {
                key: Some(GroupKey::Int(c as i64)),
                m: xi.len() / d,
                xi,
                tau: 0.0,
                n_train: 0,
                n_calibration: 0,
                calibrated_on: CalibratedOn::Holdout,
            }
        })
        .collect();
    let model = Model::new(ModelParts {
        d,
        beta: g["beta_auto"].as_f64().unwrap(),
        normalize: Normalize::L2,
        max_iter: 16,
        tol: 1e-6,
        groups,
        tau_star: 0.0,
        provenance: Provenance::default(),
        whitening: Some(wh),
        beta_search: None,
    })
    .unwrap();
    let cal: Vec<usize> = g["cal_idx"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let rows: Vec<f64> = cal.iter().flat_map(|&i| x[i].clone()).collect();
    let groups: Vec<Option<u32>> = cal.iter().map(|&i| Some(label[i])).collect();
    let mut acc = CalibrationEnergies::new(k);
    let kept = model
        .calibration_energies(&Rows::dense_f64(&rows, d), &groups, &mut acc)
        .unwrap();
    assert_eq!(kept, cal.len());
    let ood_rate = g["ood_rate"].as_f64().unwrap();
    let t = acc.thresholds(ood_rate).unwrap();
    for (got, want) in t.tau.iter().zip(vecf(&g["tau"])) {
        near(*got, want, 1e-9, "tau");
    }
    let sorted = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v
    };
    let best = sorted(vecf(&g["calibration_scores_best"]));
    assert_eq!(t.sets.best.len(), best.len());
    for (got, want) in t.sets.best.scores().iter().zip(&best) {
        near(*got, *want, 1e-9, "calibration_scores_best");
    }
    for c in 0..k {
        let own = sorted(vecf(&g["calibration_scores_own"][c.to_string()]));
        assert_eq!(t.sets.own[c].len(), own.len());
        for (got, want) in t.sets.own[c].scores().iter().zip(&own) {
            near(*got, *want, 1e-9, &format!("calibration_scores_own[{c}]"));
        }
    }
}

/// Labelled Gaussian clusters, `n` rows per group, the last group `small` rows.
fn clusters(k: usize, n: usize, small: usize, d: usize, seed: u64) -> (Vec<f32>, Vec<i64>) {
    let mut rng = Rng::new(seed);
    let centres: Vec<f64> = (0..k * d).map(|_| rng.next_f64() - 0.5).collect();
    let (mut x, mut labels) = (Vec::new(), Vec::new());
    for c in 0..k {
        let rows = if c + 1 == k { small } else { n };
        for _ in 0..rows {
            for j in 0..d {
                x.push((centres[c * d + j] + 0.2 * (rng.next_f64() - 0.5)) as f32);
            }
            labels.push(c as i64);
        }
    }
    (x, labels)
}

fn keys(labels: &[i64]) -> Vec<Option<GroupKey>> {
    labels.iter().map(|&l| Some(GroupKey::Int(l))).collect()
}

fn fit(x: &[f32], labels: &[i64], d: usize, p: TrainParams) -> (Model, Vec<(i64, Vec<f32>)>) {
    let mut set = TrainingSet::new(d, None, p.seed).unwrap();
    set.push(&Rows::dense_f32(x, d), Some(&keys(labels)))
        .unwrap();
    let p = p.check().unwrap();
    let model = p.fit(&set, "test", &reclag::NoProgress).unwrap();
    let cal = p
        .calibration_rows(&set)
        .into_iter()
        .map(|(k, v)| match k {
            Some(GroupKey::Int(k)) => (k, v),
            other => panic!("unexpected key {other:?}"),
        })
        .collect();
    (model, cal)
}

/// Re-thresholding a model on its own calibration rows at its own level gives back
/// every `τ_g`, `τ_*` and calibration score bit for bit, for both recipes, with the
/// rows arriving in one interleaved batch rather than group by group. One group is
/// small enough to be calibrated on its training rows.
#[test]
fn recalibrating_on_the_models_own_calibration_rows_gives_back_its_thresholds() {
    let d = 10;
    let (x, labels) = clusters(4, 600, 150, d, 3);
    for p in [
        TrainParams {
            memories: 12,
            ..TrainParams::default()
        },
        TrainParams {
            epochs: 3,
            ..TrainParams::paper()
        },
    ] {
        let recipe = p.recipe;
        let (model, cal) = fit(&x, &labels, d, p);
        assert_eq!(model.groups()[3].calibrated_on, CalibratedOn::Train);
        let sets = model
            .calibration()
            .expect("a trained model keeps its scores");
        // Interleave the groups' rows: re-thresholding must not depend on row order.
        let mut rows = Vec::new();
        let mut groups = Vec::new();
        let longest = cal.iter().map(|(_, v)| v.len() / d).max().unwrap();
        for i in 0..longest {
            for (k, v) in &cal {
                if let Some(r) = v.get(i * d..(i + 1) * d) {
                    rows.extend_from_slice(r);
                    groups.push(Some(*k as u32));
                }
            }
        }
        let mut acc = CalibrationEnergies::new(4);
        // In two pushes, as two batches of a file would arrive.
        let half = groups.len() / 2;
        for (r, g) in [(0..half), (half..groups.len())]
            .into_iter()
            .map(|s| (&rows[s.start * d..s.end * d], &groups[s]))
        {
            model
                .calibration_energies(&Rows::dense_f32(r, d), g, &mut acc)
                .unwrap();
        }
        let again = model
            .recalibrated(&acc, sets.ood_rate, Provenance::default())
            .unwrap();
        for (a, b) in model.groups().iter().zip(again.groups()) {
            assert_eq!(a.tau.to_bits(), b.tau.to_bits(), "{recipe:?} tau");
            assert_eq!(a.xi, b.xi);
        }
        assert_eq!(model.tau_star().to_bits(), again.tau_star().to_bits());
        assert_eq!(
            again.calibration(),
            Some(sets),
            "{recipe:?} calibration scores"
        );
        // At another level the thresholds move: 10 % of each group's rows lie below τ.
        let r = model
            .recalibrated(&acc, 0.1, Provenance::default())
            .unwrap();
        for (g, t) in r.groups().iter().enumerate() {
            let own = &r.calibration().unwrap().own[g];
            let below = own.scores().iter().filter(|&&s| s < 0.0).count();
            let want = (0.1 * (own.len() - 1) as f64).floor() as usize;
            assert_eq!(
                below, want,
                "group {g}: τ {} is the lower 10 % quantile",
                t.tau
            );
        }
    }
}

/// Rows exchangeable with the calibration rows get p-values with `P(p ≤ α) ≤ α`:
/// fresh rows from the training distribution, after re-thresholding on other fresh
/// rows, routed by label and by best margin; and p-values follow the scores.
#[test]
fn p_values_of_exchangeable_rows_are_valid() {
    let d = 10;
    let (x, labels) = clusters(4, 4000, 4000, d, 5);
    let n = x.len() / d;
    // Train on the first half; the second half is fresh ID data in two quarters.
    let pick = |ids: &[usize]| -> (Vec<f32>, Vec<i64>) {
        let mut v = Vec::new();
        for &i in ids {
            v.extend_from_slice(&x[i * d..(i + 1) * d]);
        }
        (v, ids.iter().map(|&i| labels[i]).collect())
    };
    let (train_ids, rest): (Vec<usize>, Vec<usize>) = (0..n).partition(|i| i % 2 == 0);
    let (cal_ids, test_ids): (Vec<usize>, Vec<usize>) = rest.iter().partition(|&&i| i % 4 == 1);
    let (tx, tl) = pick(&train_ids);
    let (model, _) = fit(
        &tx,
        &tl,
        d,
        TrainParams {
            memories: 16,
            ..TrainParams::default()
        },
    );
    let (cx, cl) = pick(&cal_ids);
    let mut acc = CalibrationEnergies::new(4);
    let cg: Vec<Option<u32>> = cl.iter().map(|&l| Some(l as u32)).collect();
    model
        .calibration_energies(&Rows::dense_f32(&cx, d), &cg, &mut acc)
        .unwrap();
    let model = model
        .recalibrated(&acc, 0.05, Provenance::default())
        .unwrap();
    let (ex, el) = pick(&test_ids);
    let eg: Vec<Option<u32>> = el.iter().map(|&l| Some(l as u32)).collect();
    let rows = Rows::dense_f32(&ex, d);
    for groups in [Some(eg.as_slice()), None] {
        let mut out = ScoreOutput::default();
        model
            .score_routed(&rows, groups, Route::Best, Work::EnergyOnly, &mut out)
            .unwrap();
        let mut p = Vec::new();
        model
            .p_values_into(&out, groups, Route::Best, &mut p)
            .unwrap();
        for alpha in [0.01, 0.05, 0.1] {
            let share = p.iter().filter(|&&v| v <= alpha).count() as f64 / p.len() as f64;
            assert!(
                share <= alpha + 0.01,
                "routed {}: P(p ≤ {alpha}) = {share}",
                if groups.is_some() { "by label" } else { "best" }
            );
            // Valid but not vacuous: close to α from below.
            assert!(share >= alpha - 0.02, "P(p ≤ {alpha}) = {share}");
        }
        // Higher scores never get smaller p-values within one calibration set.
        let mut by: Vec<(u32, f64, f64)> = (0..p.len())
            .map(|i| {
                (
                    groups.map_or(u32::MAX, |g| g[i].unwrap()),
                    out.score[i],
                    p[i],
                )
            })
            .collect();
        by.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
        assert!(by.windows(2).all(|w| w[0].0 != w[1].0 || w[0].2 <= w[1].2));
    }
    // The route picks the set: a best-routed row compares against the best-route
    // scores, a labelled one against its group's own margins.
    assert_eq!(model.against(None, Route::Best), Against::Best);
    assert_eq!(model.against(None, Route::Union), Against::Union);
    assert_eq!(model.against(Some(2), Route::Best), Against::Group(2));
}

/// Re-thresholding refuses what would give a meaningless τ, naming the groups; a
/// model without calibration scores has no p-values and says how to get them.
#[test]
fn recalibration_refuses_bad_input() {
    let d = 6;
    let (x, labels) = clusters(3, 300, 300, d, 7);
    let (model, cal) = fit(&x, &labels, d, TrainParams::default());
    let mut acc = CalibrationEnergies::new(3);
    // Group 2 gets 15 rows: fewer than 1/0.05 = 20.
    for (k, v) in &cal {
        let take = if *k == 2 { 15 } else { v.len() / d };
        let g = vec![Some(*k as u32); take];
        model
            .calibration_energies(&Rows::dense_f32(&v[..take * d], d), &g, &mut acc)
            .unwrap();
    }
    let e = model
        .recalibrated(&acc, 0.05, Provenance::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("needs at least 20 rows") && e.contains("2 (15 rows)") && !e.contains("0 ("),
        "{e}"
    );
    assert!(model.recalibrated(&acc, 0.1, Provenance::default()).is_ok());
    for bad in [0.0, 1.0, 1.5, f64::NAN] {
        let e = model
            .recalibrated(&acc, bad, Provenance::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("ood-rate") && e.contains("(0, 1)"), "{e}");
    }
    let wrong = vec![0.5f32; 4 * (d + 1)];
    let e = model
        .calibration_energies(&Rows::dense_f32(&wrong, d + 1), &[Some(0); 4], &mut acc)
        .unwrap_err()
        .to_string();
    assert!(e.contains("expected embedding dimension 6, found 7"), "{e}");
}

/// Version 3 files carry the calibration scores, the label column and the source of a
/// re-thresholded model through a save and a load; a version 2 file (written by the
/// previous release) loads with its checksum, scores exactly as that release did, and
/// refuses p-values with a message saying what to do.
#[test]
fn model_files_carry_calibration_and_older_files_score_as_before() {
    let d = 8;
    let (x, labels) = clusters(3, 400, 400, d, 9);
    let (model, cal) = fit(&x, &labels, d, TrainParams::default());
    let model = model.with_label_column(Some("label".into()));
    let back = |m: &Model| {
        reclag::format::from_bytes(
            reclag::format::to_bytes(m).unwrap().into(),
            std::path::Path::new("m"),
        )
        .unwrap()
    };
    let b = back(&model);
    assert_eq!(reclag::format::version_of(&b), "3");
    assert_eq!(b.calibration(), model.calibration());
    assert_eq!(b.provenance(), model.provenance());
    assert_eq!(
        reclag::format::checksum(&b),
        reclag::format::checksum(&model)
    );
    let mut acc = CalibrationEnergies::new(3);
    for (k, v) in &cal {
        let g = vec![Some(*k as u32); v.len() / d];
        model
            .calibration_energies(&Rows::dense_f32(v, d), &g, &mut acc)
            .unwrap();
    }
    let sum = reclag::format::checksum(&model);
    let prov = Provenance {
        recalibrated_from: Some(sum.clone()),
        ..model.provenance().clone()
    };
    let r = back(&model.recalibrated(&acc, 0.2, prov).unwrap());
    assert_eq!(
        r.provenance().recalibrated_from.as_deref(),
        Some(sum.as_str())
    );
    assert_eq!(r.calibration().unwrap().ood_rate, 0.2);
    assert_ne!(reclag::format::checksum(&r), sum);

    // A version 2 model, as the previous release wrote and scored it.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let v2 = reclag::format::load(&dir.join("model_v2.parquet")).unwrap();
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("model_v2.json")).unwrap()).unwrap();
    assert!(v2.calibration().is_none());
    assert_eq!(reclag::format::version_of(&v2), "2");
    assert_eq!(
        Some(reclag::format::checksum(&v2).as_str()),
        want["checksum"].as_str()
    );
    let test = crate::common::read_parquet(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/demo/id_test.parquet"),
    );
    let b = test.slice(0, want["rows"].as_u64().unwrap() as usize);
    let rows = reclag::arrow::embedding_rows(
        b.column_by_name("embedding").unwrap().as_ref(),
        "embedding",
        None,
    )
    .unwrap();
    let g =
        reclag::arrow::resolve_groups(&v2, b.column_by_name("label").unwrap().as_ref(), "label")
            .unwrap();
    for (groups, key) in [(Some(g.as_slice()), "by_label"), (None, "best")] {
        let mut o = ScoreOutput::default();
        v2.score_into(&rows, groups, Work::WithDynamics, &mut o)
            .unwrap();
        let w = &want[key];
        // The release that wrote these whitened every row explicitly; the whitening is
        // now folded into the memories, so sums round in another order: equal to 1e-12.
        for (name, got) in [
            ("score", &o.score),
            ("energy", &o.energy),
            ("ood_probability", &o.ood_probability),
        ] {
            let want = vecf(&w[name]);
            assert_eq!(got.len(), want.len(), "{key} {name}");
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-12 * (1.0 + w.abs()),
                    "{key} {name} row {i}: {g} vs {w}"
                );
            }
        }
        let flags: Vec<bool> = w["is_ood"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_bool().unwrap())
            .collect();
        assert_eq!(o.is_ood, flags, "{key}");
        let attractors: Vec<i32> = w["attractor"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap() as i32)
            .collect();
        assert_eq!(o.attractor, attractors, "{key}");
        let e = v2
            .p_values_into(&o, groups, Route::Best, &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no calibration scores") && e.contains("reclag calibrate"),
            "{e}"
        );
    }
    // Re-saved without calibration scores it stays version 2, checksum unchanged.
    let again = back(&v2);
    assert_eq!(
        reclag::format::checksum(&again),
        want["checksum"].as_str().unwrap()
    );
}

/// The p-value column of a scored file, in row order.
fn p_column(path: &std::path::Path) -> Vec<Option<f64>> {
    use arrow_array::cast::AsArray;
    let b = crate::common::read_parquet(path);
    b.column_by_name("reclag_p_value")
        .expect("a reclag_p_value column")
        .as_primitive::<arrow_array::types::Float64Type>()
        .iter()
        .collect()
}

fn share_at_most(p: &[Option<f64>], alpha: f64) -> f64 {
    let v: Vec<f64> = p.iter().flatten().copied().collect();
    v.iter().filter(|&&x| x <= alpha).count() as f64 / v.len() as f64
}

/// `image_fmnist` halves: even rows of `id_test` to calibrate on, odd rows to test,
/// each with an `id` column; and a model trained on `id_train` (whitened, by label).
struct Fmnist {
    tmp: tempfile::TempDir,
    dir: std::path::PathBuf,
}

impl Fmnist {
    fn new() -> Option<Self> {
        use arrow_array::{ArrayRef, Int64Array};
        let dir = crate::common::shared("data/image_fmnist")?;
        let tmp = tempfile::tempdir().unwrap();
        let test = crate::common::read_parquet(&dir.join("id_test.parquet"));
        for (name, parity) in [("cal.parquet", 0), ("held.parquet", 1)] {
            let idx: Vec<u32> = (0..test.num_rows() as u32)
                .filter(|i| i % 2 == parity)
                .collect();
            let idx = arrow_array::UInt32Array::from(idx);
            let schema = test.schema();
            let cols: Vec<(&str, ArrayRef)> = schema
                .fields()
                .iter()
                .zip(test.columns())
                .map(|(f, c)| {
                    (
                        f.name().as_str(),
                        arrow_select::take::take(c, &idx, None).unwrap(),
                    )
                })
                .chain([(
                    "id",
                    Arc::new(Int64Array::from_iter_values(
                        idx.values().iter().map(|&v| v as i64),
                    )) as ArrayRef,
                )])
                .collect();
            crate::common::write_parquet(&tmp.path().join(name), cols);
        }
        let f = Fmnist { tmp, dir };
        crate::common::cli_ok(&[
            "train",
            "--input",
            &f.dir.join("id_train.parquet").display().to_string(),
            "--label",
            "label",
            "--output",
            &f.path("model.parquet"),
        ]);
        Some(f)
    }

    fn path(&self, name: &str) -> String {
        self.tmp.path().join(name).display().to_string()
    }
}

use std::sync::Arc;

/// §11 on real data, through the command line. After `reclag calibrate` on half of
/// `id_test`, the other half's p-values are valid (`P(p ≤ α) ≤ α + 0.01`) routed by
/// label and by best margin; without it they are not (held-out training rows are
/// more in-distribution than fresh ones), and logits routing (misrouted rows meet
/// another group's scores) is measured. Calibrating on the model's own level flags
/// about that share of the held-out half; at 0.1, about 10 %.
#[test]
fn p_values_on_image_fmnist_after_recalibration() {
    use crate::common::cli_ok;
    let Some(f) = Fmnist::new() else {
        return;
    };
    let (model, held) = (f.path("model.parquet"), f.path("held.parquet"));
    let out = cli_ok(&[
        "calibrate",
        "--model",
        &model,
        "--input",
        &f.path("cal.parquet"),
        "--output",
        &f.path("cal05.parquet"),
    ]);
    // The label column came from the model; the old τ flagged fresh rows above 5 %.
    assert!(
        out.contains("on 5000 rows at ood-rate 0.05 (label label;"),
        "{out}"
    );
    let original = reclag::format::load(std::path::Path::new(&model)).unwrap();
    let recal = reclag::format::load(&f.tmp.path().join("cal05.parquet")).unwrap();
    assert_eq!(
        recal.provenance().recalibrated_from.as_deref(),
        Some(reclag::format::checksum(&original).as_str())
    );
    let info = cli_ok(&["inspect", &f.path("cal05.parquet")]);
    assert!(
        info.contains("format         version 3")
            && info.contains("p-values       calibration scores at ood_rate 0.05: 5000 best-route")
            && info.contains("label column   label")
            && info.contains(&format!(
                "recalibrated   from the model with checksum {}",
                reclag::format::checksum(&original)
            )),
        "{info}"
    );
    let v2 = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/model_v2.parquet");
    let info = cli_ok(&["inspect", &v2.display().to_string()]);
    assert!(
        info.contains("format         version 2") && info.contains("p-values       none"),
        "{info}"
    );
    let mut rows = vec![];
    for (name, m, routing) in [
        ("uncalibrated, by label", &model, vec!["--group", "label"]),
        ("uncalibrated, best", &model, vec![]),
        (
            "recalibrated, by label",
            &f.path("cal05.parquet"),
            vec!["--group", "label"],
        ),
        ("recalibrated, best", &f.path("cal05.parquet"), vec![]),
        (
            "recalibrated, by logits",
            &f.path("cal05.parquet"),
            vec!["--group-from-logits", "logits"],
        ),
    ] {
        let o = f.path("scored.parquet");
        let mut args = vec!["score", "--model", m, "--input", &held, "--output", &o];
        args.extend_from_slice(&routing);
        cli_ok(&args);
        let p = p_column(std::path::Path::new(&o));
        let shares: Vec<f64> = [0.01, 0.05, 0.1]
            .iter()
            .map(|&a| share_at_most(&p, a))
            .collect();
        eprintln!("P(p ≤ 0.01, 0.05, 0.1) on held-out id_test, {name}: {shares:.4?}");
        rows.push((name, shares));
    }
    for (name, shares) in &rows {
        if name.starts_with("recalibrated, by label") || name.starts_with("recalibrated, best") {
            for (a, s) in [0.01, 0.05, 0.1].iter().zip(shares) {
                assert!(*s <= a + 0.01, "{name}: P(p ≤ {a}) = {s}");
            }
        }
    }
    // Without recalibration, fresh ID rows get too many small p-values.
    assert!(rows[0].1[1] > 0.05 + 0.01, "{:?}", rows[0]);
    // Re-thresholded at 0.1, about 10 % of the held-out half is flagged (score ≤ 0).
    cli_ok(&[
        "calibrate",
        "--model",
        &model,
        "--input",
        &f.path("cal.parquet"),
        "--ood-rate",
        "0.1",
        "--output",
        &f.path("cal10.parquet"),
    ]);
    let o = f.path("scored10.parquet");
    cli_ok(&[
        "score",
        "--model",
        &f.path("cal10.parquet"),
        "--input",
        &held,
        "--output",
        &o,
        "--group",
        "label",
    ]);
    use arrow_array::cast::AsArray;
    let b = crate::common::read_parquet(std::path::Path::new(&o));
    let s = b
        .column_by_name("reclag_score")
        .unwrap()
        .as_primitive::<arrow_array::types::Float64Type>();
    let flagged = s.values().iter().filter(|&&v| v <= 0.0).count() as f64 / s.len() as f64;
    assert!(
        (flagged - 0.1).abs() < 0.02,
        "flagged {flagged} at ood-rate 0.1"
    );
}

/// `reclag filter --fdr` rejects exactly what Benjamini–Hochberg rejects over the
/// p-values `reclag score` writes, and on a mix of fresh ID rows (recalibrated) and
/// OOD rows its realised false-discovery proportion stays near the level. SQL and
/// Polars give the same p-values as `score`.
#[test]
fn filter_by_false_discovery_rate_on_image_fmnist() {
    use crate::common::{cli_err, cli_ok};
    use arrow_array::cast::AsArray;
    use arrow_array::types::Int64Type;
    let Some(f) = Fmnist::new() else {
        return;
    };
    cli_ok(&[
        "calibrate",
        "--model",
        &f.path("model.parquet"),
        "--input",
        &f.path("cal.parquet"),
        "--output",
        &f.path("m.parquet"),
    ]);
    // The mix: 5000 held-out ID rows (ids < 10000) and 2000 MNIST digits (ids ≥ 10000).
    let held = crate::common::read_parquet(&f.tmp.path().join("held.parquet"));
    let ood = crate::common::read_parquet(&f.dir.join("ood_mnist.parquet")).slice(0, 2000);
    let ood_ids: arrow_array::ArrayRef =
        Arc::new(arrow_array::Int64Array::from_iter_values(10_000..12_000));
    let ood = crate::common::with_column(
        &ood,
        arrow_schema::Field::new("id", arrow_schema::DataType::Int64, false),
        ood_ids,
    );
    // MNIST rows have no label: every column nullable in the mix.
    let nullable = Arc::new(arrow_schema::Schema::new(
        held.schema()
            .fields()
            .iter()
            .map(|fl| fl.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
    ));
    let ood = ood
        .project(
            &held
                .schema()
                .fields()
                .iter()
                .map(|fl| ood.schema().index_of(fl.name()).unwrap())
                .collect::<Vec<_>>(),
        )
        .unwrap();
    let relabel = |b: &arrow_array::RecordBatch| {
        arrow_array::RecordBatch::try_new(nullable.clone(), b.columns().to_vec()).unwrap()
    };
    let mix =
        arrow_select::concat::concat_batches(&nullable, [&relabel(&held), &relabel(&ood)]).unwrap();
    let schema = mix.schema();
    let cols: Vec<(&str, arrow_array::ArrayRef)> = schema
        .fields()
        .iter()
        .map(|fl| fl.name().as_str())
        .zip(mix.columns().iter().cloned())
        .collect();
    crate::common::write_parquet(&f.tmp.path().join("mix.parquet"), cols);
    let (m, mixp) = (f.path("m.parquet"), f.path("mix.parquet"));
    let scored = f.path("scored.parquet");
    cli_ok(&[
        "score", "--model", &m, "--input", &mixp, "--output", &scored,
    ]);
    let p: Vec<f64> = p_column(std::path::Path::new(&scored))
        .into_iter()
        .map(|v| v.unwrap())
        .collect();
    let want = reclag::conformal::benjamini_hochberg(&p, 0.1);
    let ood_out = f.path("ood.parquet");
    let msg = cli_ok(&[
        "filter", "--model", &m, "--input", &mixp, "--keep", "ood", "--fdr", "0.1", "--output",
        &ood_out,
    ]);
    assert!(msg.contains("Benjamini–Hochberg at q=0.1"), "{msg}");
    let got = crate::common::read_parquet(std::path::Path::new(&ood_out));
    let ids = got
        .column_by_name("id")
        .unwrap()
        .as_primitive::<Int64Type>();
    let mix_ids = mix
        .column_by_name("id")
        .unwrap()
        .as_primitive::<Int64Type>();
    let want_ids: Vec<i64> = (0..want.len())
        .filter(|&i| want[i])
        .map(|i| mix_ids.value(i))
        .collect();
    assert_eq!(ids.values().to_vec(), want_ids);
    let false_discoveries = want_ids.iter().filter(|&&id| id < 10_000).count();
    let fdp = false_discoveries as f64 / want_ids.len() as f64;
    let power = want_ids.iter().filter(|&&id| id >= 10_000).count() as f64 / 2000.0;
    eprintln!(
        "filter --fdr 0.1: {} rejected, {false_discoveries} of them ID (FDP {fdp:.4}), {power:.3} of the OOD rows found",
        want_ids.len()
    );
    assert!(fdp <= 0.1 + 0.02, "FDP {fdp}");
    assert!(power > 0.5, "power {power}");
    // --keep id keeps exactly the complement.
    let id_out = f.path("id.parquet");
    cli_ok(&[
        "filter", "--model", &m, "--input", &mixp, "--keep", "id", "--fdr", "0.1", "--output",
        &id_out,
    ]);
    assert_eq!(
        crate::common::read_parquet(std::path::Path::new(&id_out)).num_rows() + want_ids.len(),
        mix.num_rows()
    );
    // SQL's reclag_p_value equals the scored column row for row.
    let sql_out = f.path("sql.parquet");
    cli_ok(&[
        "sql",
        "--table",
        &format!("t={mixp}"),
        "--model",
        &format!("m={m}"),
        "SELECT reclag_p_value('m', embedding) AS reclag_p_value FROM t ORDER BY id",
        "--output",
        &sql_out,
    ]);
    let sql_p: Vec<f64> = p_column(std::path::Path::new(&sql_out))
        .into_iter()
        .map(|v| v.unwrap())
        .collect();
    assert_eq!(sql_p, p);
    // Bad levels and a model without calibration scores are refused, saying why.
    for bad in ["0", "1.5"] {
        let e = cli_err(&[
            "filter", "--model", &m, "--input", &mixp, "--keep", "id", "--fdr", bad, "--output",
            &id_out,
        ]);
        assert!(
            e.contains("--fdr must be in (0, 1)") && e.contains(bad),
            "{e}"
        );
    }
    let v2 = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/model_v2.parquet")
        .display()
        .to_string();
    let demo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("pipelines/demo/id_test.parquet")
        .display()
        .to_string();
    let e = cli_err(&[
        "filter", "--model", &v2, "--input", &demo, "--keep", "id", "--fdr", "0.1", "--output",
        &id_out,
    ]);
    assert!(
        e.contains("no calibration scores") && e.contains("reclag calibrate"),
        "{e}"
    );
    let e = cli_err(&[
        "sql",
        "--table",
        &format!("t={demo}"),
        "--model",
        &format!("m={v2}"),
        "SELECT reclag_p_value('m', embedding) FROM t",
    ]);
    assert!(e.contains("no calibration scores"), "{e}");
}

/// `reclag calibrate` names what is wrong: another dimension, a group the model does
/// not know, a group with fewer rows than 1/ood-rate, a level out of range, a label
/// column on an unlabelled model.
#[test]
fn calibrate_refuses_bad_input() {
    use crate::common::{cli_err, cli_ok, fsl, write_parquet};
    use arrow_array::{ArrayRef, Int64Array};
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n).display().to_string();
    let (rows, labels) = crate::common::clusters(3, 200, 8, 1);
    write_parquet(
        &tmp.path().join("train.parquet"),
        vec![
            ("embedding", fsl(&rows, 8)),
            (
                "label",
                Arc::new(Int64Array::from(labels.clone())) as ArrayRef,
            ),
        ],
    );
    cli_ok(&[
        "train",
        "--input",
        &p("train.parquet"),
        "--label",
        "label",
        "--output",
        &p("m.parquet"),
    ]);
    let calibrate = |input: &str, extra: &[&str]| {
        let mut a = vec!["calibrate", "--model", "", "--input", input, "--output", ""];
        let (m, o) = (p("m.parquet"), p("out.parquet"));
        a[2] = &m;
        a[6] = &o;
        a.extend_from_slice(extra);
        cli_err(&a)
    };
    // Another dimension.
    let (wide, _) = crate::common::clusters(3, 10, 9, 2);
    write_parquet(
        &tmp.path().join("wide.parquet"),
        vec![
            ("embedding", fsl(&wide, 9)),
            (
                "label",
                Arc::new(Int64Array::from(vec![0i64; 30])) as ArrayRef,
            ),
        ],
    );
    let e = calibrate(&p("wide.parquet"), &[]);
    assert!(
        e.contains("expected embedding dimension 8, found 9") && e.contains("wide.parquet"),
        "{e}"
    );
    // An unknown group.
    let mut bad = labels.clone();
    bad[5] = 7;
    write_parquet(
        &tmp.path().join("unknown.parquet"),
        vec![
            ("embedding", fsl(&rows, 8)),
            ("label", Arc::new(Int64Array::from(bad)) as ArrayRef),
        ],
    );
    let e = calibrate(&p("unknown.parquet"), &[]);
    assert!(
        e.contains("unknown group 7") && e.contains("0, 1, 2"),
        "{e}"
    );
    // Too few rows in group 2 (10 < 1/0.05).
    let few: Vec<Option<Vec<f32>>> = rows[..410].to_vec();
    write_parquet(
        &tmp.path().join("few.parquet"),
        vec![
            ("embedding", fsl(&few, 8)),
            (
                "label",
                Arc::new(Int64Array::from(labels[..410].to_vec())) as ArrayRef,
            ),
        ],
    );
    let e = calibrate(&p("few.parquet"), &[]);
    assert!(
        e.contains("at least 20 rows") && e.contains("2 (10 rows)"),
        "{e}"
    );
    for bad in ["0", "1.5"] {
        let e = calibrate(&p("train.parquet"), &["--ood-rate", bad]);
        assert!(
            e.contains("--ood-rate must be in (0, 1)") && e.contains(bad),
            "{e}"
        );
    }
    // Nothing was written by any failed run.
    assert!(!tmp.path().join("out.parquet").exists());
    // On the training table itself it works; 10 groups' worth of labels are recorded.
    let out = cli_ok(&[
        "calibrate",
        "--model",
        &p("m.parquet"),
        "--input",
        &p("train.parquet"),
        "--output",
        &p("out.parquet"),
    ]);
    assert!(out.contains("recalibrated 3 group(s) on 600 rows"), "{out}");
    // An unlabelled model refuses --label.
    cli_ok(&[
        "train",
        "--input",
        &p("train.parquet"),
        "--output",
        &p("one.parquet"),
    ]);
    let e = cli_err(&[
        "calibrate",
        "--model",
        &p("one.parquet"),
        "--input",
        &p("train.parquet"),
        "--label",
        "label",
        "--output",
        &p("o2.parquet"),
    ]);
    assert!(e.contains("trained without labels"), "{e}");
}

/// `reclag calibrate` on the rows a model held out for calibration, at the model's
/// level, writes back the model's τ and calibration scores bit for bit, for both
/// recipes: the training job splits the table, the split's rows go to a Parquet file
/// in another order, and the command line re-thresholds from it.
#[test]
fn calibrate_on_the_models_own_calibration_rows_reproduces_its_thresholds() {
    use crate::common::{cli_ok, fsl, write_parquet};
    use arrow_array::{ArrayRef, Int64Array};
    let tmp = tempfile::tempdir().unwrap();
    let (rows, labels) = crate::common::clusters(4, 400, 16, 11);
    let train = tmp.path().join("train.parquet");
    write_parquet(
        &train,
        vec![
            ("embedding", fsl(&rows, 16)),
            ("label", Arc::new(Int64Array::from(labels)) as ArrayRef),
        ],
    );
    for params in [
        TrainParams::default(),
        TrainParams {
            epochs: 3,
            ..TrainParams::paper()
        },
    ] {
        let out = tmp.path().join("m.parquet");
        let stores = Arc::new(reclag_pipelines::store::Stores::new(Default::default()));
        let job = reclag_pipelines::ops::train::TrainJob::new(
            stores,
            vec![train.display().to_string()],
            out.display().to_string(),
        )
        .label(Some("label".into()))
        .params(params.clone());
        let model = job.run().unwrap();
        let (set, _) = job.collect().unwrap();
        let cal = params.clone().check().unwrap().calibration_rows(&set);
        // Groups in reverse order, rows reversed within each.
        let (mut cal_rows, mut cal_labels) = (vec![], vec![]);
        for (k, v) in cal.iter().rev() {
            let Some(GroupKey::Int(k)) = k else {
                panic!("{k:?}")
            };
            for r in v.chunks(16).rev() {
                cal_rows.push(Some(r.to_vec()));
                cal_labels.push(*k);
            }
        }
        let cal_path = tmp.path().join("cal.parquet");
        write_parquet(
            &cal_path,
            vec![
                ("embedding", fsl(&cal_rows, 16)),
                ("label", Arc::new(Int64Array::from(cal_labels)) as ArrayRef),
            ],
        );
        let again = tmp.path().join("again.parquet");
        cli_ok(&[
            "calibrate",
            "--model",
            &out.display().to_string(),
            "--input",
            &cal_path.display().to_string(),
            "--output",
            &again.display().to_string(),
        ]);
        let again = reclag::format::load(&again).unwrap();
        for (a, b) in model.groups().iter().zip(again.groups()) {
            assert_eq!(a.tau.to_bits(), b.tau.to_bits(), "{:?}", params.recipe);
        }
        assert_eq!(model.tau_star().to_bits(), again.tau_star().to_bits());
        assert_eq!(model.calibration(), again.calibration());
    }
}
