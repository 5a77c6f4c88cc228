//! §10 (the whitened recipe) against `../shared/spec/golden/whitened.json`, its
//! properties, and the bad inputs the trainer meets.

use reclag::model::{CalibratedOn, Group, GroupKey, ModelParts, Provenance};
use reclag::rng::Rng;
use reclag::train::{BETA_GRID, choose_beta, leave_one_group_out};
use reclag::{
    Model, Normalize, Route, Rows, ScoreOutput, TrainParams, TrainingSet, Whitening, Work,
};

use crate::common::{json, mat, near, vecf};

fn l2(r: &[f64]) -> Vec<f64> {
    let mut v = r.to_vec();
    Normalize::L2.apply(&mut v);
    v
}

#[test]
fn golden_whitened_recipe() {
    let Some(g) = json("spec/golden/whitened.json") else {
        return;
    };
    let d = g["d"].as_u64().unwrap() as usize;
    let k = g["groups"].as_u64().unwrap() as usize;
    let x = mat(&g["X"]);
    let label: Vec<usize> = g["label"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let idx = |key: &str| -> Vec<usize> {
        g[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect()
    };
    let (fit_idx, cal_idx) = (idx("fit_idx"), idx("cal_idx"));
    let rows_of = |ids: &[usize], grp: usize| -> Vec<f64> {
        ids.iter()
            .filter(|&&i| label[i] == grp)
            .flat_map(|&i| l2(&x[i]))
            .collect()
    };
    // Preprocessing: μ, Σ_w and W from the fit rows, to 1e-9.
    let fit: Vec<Vec<f64>> = (0..k).map(|c| rows_of(&fit_idx, c)).collect();
    let fit_refs: Vec<&[f64]> = fit.iter().map(|v| v.as_slice()).collect();
    let shrink = g["shrinkage"].as_f64().unwrap();
    assert_eq!(shrink, reclag::whiten::SHRINKAGE);
    let (wh, sigma) = reclag::whiten::fit(&fit_refs, d, shrink).unwrap();
    for (got, want) in wh.mean().iter().zip(vecf(&g["mu"])) {
        near(*got, want, 1e-9, "mu");
    }
    for (got, want) in sigma.iter().zip(mat(&g["sigma_w"]).concat()) {
        near(*got, want, 1e-9, "sigma_w");
    }
    for (got, want) in wh.matrix().iter().zip(mat(&g["W"]).concat()) {
        near(*got, want, 1e-9, "W");
    }
    let pre = |rows: &[f64]| {
        let mut out = vec![0.0; rows.len()];
        let n = rows.len() / d;
        let m = Model::new(one_group_model(d, &wh)).unwrap();
        let mut valid = Vec::new();
        let mut buf = Vec::new();
        m.preprocess(&Rows::dense_f64(rows, d), 0, n, &mut buf, &mut valid);
        out.copy_from_slice(&buf);
        out
    };
    // Spherical k-means from the given centres: one Lloyd iteration and 25.
    let mut memories = Vec::new();
    for c in 0..k {
        let mg = &g["memories"][c.to_string()];
        let xf = pre(&fit[c]);
        let mut centres = mat(&mg["init"]).concat();
        let mut rng = Rng::new(0);
        let mut objective = f64::NEG_INFINITY;
        for it in 1..=reclag::kmeans::ITERATIONS {
            let o = reclag::kmeans::lloyd_step(&xf, d, &mut centres, &mut rng);
            assert!(o >= objective - 1e-12, "group {c}: objective fell at {it}");
            objective = o;
            if it == 1 {
                for (got, want) in centres.iter().zip(mat(&mg["after_1_iteration"]).concat()) {
                    near(*got, want, 1e-9, &format!("group {c} after 1 iteration"));
                }
            }
        }
        let want = mat(&mg["after_25_iterations"]).concat();
        for (got, want) in centres.iter().zip(&want) {
            near(*got, *want, 1e-9, &format!("group {c} after 25 iterations"));
        }
        memories.push(centres);
    }
    // β by leave-one-group-out, every cell of the table.
    let cal: Vec<Vec<f64>> = (0..k).map(|c| pre(&rows_of(&cal_idx, c))).collect();
    let cal_refs: Vec<&[f64]> = cal.iter().map(|v| v.as_slice()).collect();
    let mem_refs: Vec<(&[f64], usize)> = memories
        .iter()
        .map(|m| (m.as_slice(), m.len() / d))
        .collect();
    let ood_rate = g["ood_rate"].as_f64().unwrap();
    let grid = vecf(&g["beta_grid"]);
    assert_eq!(grid, BETA_GRID);
    let table = leave_one_group_out(&mem_refs, &cal_refs, d, &grid, ood_rate);
    for t in &table {
        let want = &g["loco"][format!("{:.1}", t.beta)];
        for (got, w) in t.tau.iter().zip(vecf(&want["tau"])) {
            near(*got, w, 1e-9, &format!("loco tau at beta {}", t.beta));
        }
        for (got, w) in t.auroc.iter().zip(vecf(&want["auroc_per_group"])) {
            near(*got, w, 1e-12, &format!("loco auroc at beta {}", t.beta));
        }
        near(t.mean, want["mean"].as_f64().unwrap(), 1e-12, "loco mean");
    }
    let beta = choose_beta(&table);
    assert_eq!(beta, g["beta_auto"].as_f64().unwrap());
    let chosen = table.iter().find(|t| t.beta == beta).unwrap();
    for (got, want) in chosen.tau.iter().zip(vecf(&g["tau"])) {
        near(*got, want, 1e-9, "tau");
    }
    // Every case through the model's own scoring path, best-routed.
    let model = Model::new(ModelParts {
        d,
        beta,
        normalize: Normalize::L2,
        max_iter: g["max_iter"].as_u64().unwrap() as usize,
        tol: g["tol"].as_f64().unwrap(),
        groups: (0..k)
            .map(|c| Group {
                key: Some(GroupKey::Int(c as i64)),
                xi: memories[c].clone(),
                m: memories[c].len() / d,
                tau: chosen.tau[c],
                n_train: 0,
                n_calibration: 0,
                calibrated_on: CalibratedOn::Holdout,
            })
            .collect(),
        tau_star: 0.0,
        provenance: Provenance::default(),
        whitening: Some(wh.clone()),
        beta_search: None,
    })
    .unwrap();
    let test_rows = mat(&g["test_rows"]);
    let flat: Vec<f64> = test_rows.concat();
    let view = Rows::dense_f64(&flat, d);
    let mut out = ScoreOutput::default();
    model
        .score_into(&view, None, Work::WithDynamics, &mut out)
        .unwrap();
    let mut ex = reclag::Explanation::default();
    model.explain_into(&view, None, &mut ex).unwrap();
    let pre_all = pre(&flat);
    for c in g["cases"].as_array().unwrap() {
        let r = c["row"].as_u64().unwrap() as usize;
        let what = |f: &str| format!("case {r} {f}");
        for (got, want) in pre_all[r * d..(r + 1) * d].iter().zip(vecf(&c["pre"])) {
            near(*got, want, 1e-9, &what("pre"));
        }
        for (j, want) in vecf(&c["energy_per_group"]).into_iter().enumerate() {
            near(
                ex.group_energy[r * k + j],
                want,
                1e-9,
                &what("energy_per_group"),
            );
        }
        assert!(out.valid[r], "{}", what("valid"));
        assert_eq!(
            out.group[r] as u64,
            c["route"].as_u64().unwrap(),
            "{}",
            what("route")
        );
        near(
            out.score[r],
            c["score"].as_f64().unwrap(),
            1e-9,
            &what("score"),
        );
        near(
            out.energy[r],
            c["energy"].as_f64().unwrap(),
            1e-9,
            &what("energy"),
        );
        near(
            model.groups()[out.group[r] as usize].tau,
            c["tau"].as_f64().unwrap(),
            1e-9,
            &what("tau"),
        );
        assert_eq!(
            out.is_ood[r],
            c["is_ood"].as_bool().unwrap(),
            "{}",
            what("is_ood")
        );
        assert_eq!(
            out.attractor[r] as i64,
            c["attractor"].as_i64().unwrap(),
            "{}",
            what("attractor")
        );
        assert_eq!(
            out.steps[r] as u64,
            c["steps"].as_u64().unwrap(),
            "{}",
            what("steps")
        );
    }
}

fn one_group_model(d: usize, wh: &Whitening) -> ModelParts {
    ModelParts {
        d,
        beta: 1.0,
        normalize: Normalize::L2,
        max_iter: 16,
        tol: 1e-6,
        groups: vec![Group {
            key: None,
            xi: vec![1.0; d],
            m: 1,
            tau: 0.0,
            n_train: 0,
            n_calibration: 0,
            calibrated_on: CalibratedOn::Train,
        }],
        tau_star: 0.0,
        provenance: Provenance::default(),
        whitening: Some(wh.clone()),
        beta_search: None,
    }
}

/// Labelled Gaussian clusters, `n` rows per group.
fn clusters(k: usize, n: usize, d: usize, seed: u64) -> (Vec<f32>, Vec<Option<GroupKey>>) {
    let mut rng = Rng::new(seed);
    let centres: Vec<f64> = (0..k * d).map(|_| rng.next_f64() - 0.5).collect();
    let mut x = Vec::new();
    let mut labels = Vec::new();
    for i in 0..k * n {
        let c = i % k;
        for j in 0..d {
            x.push((centres[c * d + j] + 0.15 * (rng.next_f64() - 0.5)) as f32);
        }
        labels.push(Some(GroupKey::Int(c as i64)));
    }
    (x, labels)
}

fn train(x: &[f32], labels: Option<&[Option<GroupKey>]>, d: usize, p: TrainParams) -> Model {
    let mut set = TrainingSet::new(d, None, p.seed).unwrap();
    set.push(&Rows::dense_f32(x, d), labels).unwrap();
    p.check()
        .unwrap()
        .fit(&set, "test", &reclag::NoProgress)
        .unwrap()
}

/// Equal seeds give byte-identical model files; another seed gives other memories.
#[test]
fn whitened_training_is_deterministic_and_chooses_beta() {
    let d = 12;
    let (x, labels) = clusters(4, 400, d, 1);
    let p = TrainParams {
        memories: 16,
        ..TrainParams::default()
    };
    let a = train(&x, Some(&labels), d, p.clone());
    let b = train(&x, Some(&labels), d, p.clone());
    let c = train(&x, Some(&labels), d, TrainParams { seed: 9, ..p });
    let bytes = |m: &Model| reclag::format::to_bytes(m).unwrap();
    assert_eq!(bytes(&a), bytes(&b));
    assert_ne!(bytes(&a), bytes(&c));
    let search = a
        .beta_search()
        .expect("four groups with 40 held-out rows each: beta is chosen");
    assert_eq!(search.grid, BETA_GRID);
    let best =
        search
            .grid
            .iter()
            .zip(&search.mean_auroc)
            .fold(
                (0.0, f64::NEG_INFINITY),
                |b, (&g, &m)| if m > b.1 { (g, m) } else { b },
            );
    assert_eq!(a.beta(), best.0);
    assert_eq!(a.recipe(), reclag::Recipe::Whitened);
    assert!(
        a.groups()
            .iter()
            .all(|g| g.m == 16 && g.calibrated_on == CalibratedOn::Holdout)
    );
    // Saved and loaded, it scores bit for bit as before.
    let back = reclag::format::from_bytes(bytes(&a).into(), std::path::Path::new("m")).unwrap();
    let mut o1 = ScoreOutput::default();
    let mut o2 = ScoreOutput::default();
    let rows = Rows::dense_f32(&x[..200 * d], d);
    a.score_into(&rows, None, Work::WithDynamics, &mut o1)
        .unwrap();
    back.score_into(&rows, None, Work::WithDynamics, &mut o2)
        .unwrap();
    assert_eq!(o1.score, o2.score);
    assert_eq!(o1.is_ood, o2.is_ood);
    // Best routing sends nearly every ID row to its own class, and flags about ood_rate.
    let own = (0..200).filter(|&i| o1.group[i] as usize == i % 4).count();
    assert!(own >= 190, "{own} of 200 routed to their own group");
    let flagged = o1.is_ood.iter().filter(|&&f| f).count();
    assert!(flagged <= 40, "{flagged} of 200 ID rows flagged");
}

/// A group with fewer rows than M keeps its rows as memories; one group falls back to
/// β = 10 and routes trivially; identical rows (a singular covariance direction)
/// still train and score finite numbers.
#[test]
fn whitened_training_edge_cases() {
    let d = 6;
    // Group 1 has 10 rows, fewer than M = 16: its memories are those rows (pre'd).
    let (mut x, mut labels) = clusters(2, 300, d, 4);
    let (small, _) = clusters(1, 10, d, 5);
    x.extend_from_slice(&small);
    labels.extend(std::iter::repeat_n(Some(GroupKey::Int(7)), 10));
    let m = train(
        &x,
        Some(&labels),
        d,
        TrainParams {
            memories: 16,
            ..TrainParams::default()
        },
    );
    let g7 = m.resolve_int(7, "label").unwrap();
    assert_eq!(m.groups()[g7].m, 10);
    assert_eq!(m.groups()[g7].calibrated_on, CalibratedOn::Train);
    // A group with under 20 held-out rows: β falls back to 10, no table.
    assert_eq!(m.beta(), 10.0);
    assert!(m.beta_search().is_none());

    // One group: β = 10, every row scored against it.
    let (x1, _) = clusters(1, 500, d, 6);
    let one = train(&x1, None, d, TrainParams::default());
    assert_eq!(one.groups().len(), 1);
    assert_eq!(one.beta(), 10.0);
    let mut out = ScoreOutput::default();
    one.score_into(&Rows::dense_f32(&x1, d), None, Work::WithDynamics, &mut out)
        .unwrap();
    assert!(out.group.iter().all(|&g| g == 0));
    // Its threshold is the 5 % quantile of its held-out rows' energies (§7).
    let below = out.score.iter().filter(|&&s| s <= 0.0).count() as f64 / 500.0;
    assert!(
        (0.002..=0.12).contains(&below),
        "one group: {below} of its rows below tau"
    );

    // Every row of one group identical: finite model, finite scores.
    let (mut x2, mut l2) = clusters(2, 200, d, 7);
    for i in 0..200 {
        x2.extend((0..d).map(|j| j as f32 + 1.0));
        l2.push(Some(GroupKey::Int(5)));
        let _ = i;
    }
    let m2 = train(
        &x2,
        Some(&l2),
        d,
        TrainParams {
            memories: 8,
            ..TrainParams::default()
        },
    );
    let mut out = ScoreOutput::default();
    m2.score_into(&Rows::dense_f32(&x2, d), None, Work::WithDynamics, &mut out)
        .unwrap();
    assert!(out.valid.iter().all(|&v| v));
    assert!(out.score.iter().all(|s| s.is_finite()));
    // They all sit exactly on their group's threshold (τ is their common energy), so
    // they are scored alike, whichever group the margins pick.
    let first = (out.group[400], out.score[400].to_bits(), out.is_ood[400]);
    assert!((400..600).all(|i| (out.group[i], out.score[i].to_bits(), out.is_ood[i]) == first));
    let g5 = m2.resolve_int(5, "label").unwrap();
    assert!(
        (m2.groups()[g5].tau - 1.0).abs() < 1e-9,
        "tau {}",
        m2.groups()[g5].tau
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]
    /// `pre` does not see a row's scale: `pre(c·x) = pre(x)` for c > 0.
    #[test]
    fn whitened_pre_is_scale_invariant(seed in 0u64..10_000, scale in 1e-6f64..1e6) {
        let d = 5;
        let mut rng = Rng::new(seed);
        let groups: Vec<Vec<f64>> = (0..2)
            .map(|_| (0..40 * d).map(|_| rng.next_f64() - 0.3).collect::<Vec<_>>())
            .map(|g| g.chunks(d).flat_map(l2).collect())
            .collect();
        let refs: Vec<&[f64]> = groups.iter().map(|g| g.as_slice()).collect();
        let (wh, _) = reclag::whiten::fit(&refs, d, reclag::whiten::SHRINKAGE).unwrap();
        let m = Model::new(one_group_model(d, &wh)).unwrap();
        let x: Vec<f64> = (0..d).map(|_| rng.next_f64() - 0.5).collect();
        let y: Vec<f64> = x.iter().map(|v| v * scale).collect();
        let (mut a, mut b, mut va, mut vb) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        m.preprocess(&Rows::dense_f64(&x, d), 0, 1, &mut a, &mut va);
        m.preprocess(&Rows::dense_f64(&y, d), 0, 1, &mut b, &mut vb);
        for (p, q) in a.iter().zip(&b) {
            proptest::prop_assert!((p - q).abs() <= 1e-9, "{p} vs {q}");
        }
    }

    /// Lloyd iterations never decrease the summed inner product of rows with their
    /// centres, from k-means++ seeding on.
    #[test]
    fn kmeans_objective_never_decreases(seed in 0u64..10_000, m in 1usize..9) {
        let d = 4;
        let mut rng = Rng::new(seed);
        let x: Vec<f64> = (0..120).flat_map(|_| l2(&(0..d).map(|_| rng.next_f64() - 0.5).collect::<Vec<_>>())).collect();
        let mut c = reclag::kmeans::seed(&x, d, m, &mut rng);
        let mut last = f64::NEG_INFINITY;
        for _ in 0..10 {
            let o = reclag::kmeans::lloyd_step(&x, d, &mut c, &mut rng);
            proptest::prop_assert!(o >= last - 1e-9, "{o} < {last}");
            last = o;
        }
    }
}

/// A model of format version 1 (written by the previous release) loads, keeps its
/// checksum, and scores rows with a label exactly as that release did; union-mode
/// energies are unchanged too.
#[test]
fn version_1_models_load_and_score_as_before() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let model = reclag::format::load(&dir.join("model_v1.parquet")).unwrap();
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("model_v1.json")).unwrap()).unwrap();
    assert_eq!(model.recipe(), reclag::Recipe::Paper);
    let bytes = std::fs::read(dir.join("model_v1.parquet")).unwrap();
    let file_sum = parquet::file::reader::FileReader::metadata(
        &parquet::file::serialized_reader::SerializedFileReader::new(bytes::Bytes::from(bytes))
            .unwrap(),
    )
    .file_metadata()
    .key_value_metadata()
    .unwrap()
    .iter()
    .find(|kv| kv.key == "reclag.checksum")
    .and_then(|kv| kv.value.clone())
    .unwrap();
    assert_eq!(Some(file_sum.as_str()), want["checksum"].as_str());
    let test = crate::common::read_parquet(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/demo/id_test.parquet"),
    );
    let n = want["rows"].as_u64().unwrap() as usize;
    let b = test.slice(0, n);
    let rows = reclag::arrow::embedding_rows(
        b.column_by_name("embedding").unwrap().as_ref(),
        "embedding",
        None,
    )
    .unwrap();
    let g =
        reclag::arrow::resolve_groups(&model, b.column_by_name("label").unwrap().as_ref(), "label")
            .unwrap();
    let mut o = ScoreOutput::default();
    model
        .score_into(&rows, Some(&g), Work::WithDynamics, &mut o)
        .unwrap();
    let w = &want["by_label"];
    assert_eq!(o.score, vecf(&w["score"]));
    assert_eq!(o.energy, vecf(&w["energy"]));
    assert_eq!(o.ood_probability, vecf(&w["ood_probability"]));
    let bools: Vec<bool> = w["is_ood"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_bool().unwrap())
        .collect();
    assert_eq!(o.is_ood, bools);
    let att: Vec<i32> = w["attractor"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap() as i32)
        .collect();
    assert_eq!(o.attractor, att);
    let mut u = ScoreOutput::default();
    model
        .score_routed(&rows, None, Route::Union, Work::EnergyOnly, &mut u)
        .unwrap();
    assert_eq!(u.energy, vecf(&want["union"]["energy"]));
    // Re-saved, it becomes version 2 and reads back equal.
    let again = reclag::format::from_bytes(
        reclag::format::to_bytes(&model).unwrap().into(),
        std::path::Path::new("m"),
    )
    .unwrap();
    assert_eq!(
        reclag::format::checksum(&again),
        reclag::format::checksum(&model)
    );
}

/// Without a group, every front end routes by best margin and flags about `ood_rate`
/// of `image_fmnist`'s ID test rows, for both recipes. (Before best routing, §3's
/// iteration against the union sent every ID row of the paper recipe to the origin:
/// 100 % flagged.) `score`, SQL's two-argument form and `filter` agree row for row.
#[test]
fn ungrouped_rows_are_flagged_near_the_ood_rate_in_every_front_end() {
    use crate::common::{cli_ok, read_parquet, shared};
    use arrow_array::cast::AsArray;
    let Some(dir) = shared("data/image_fmnist") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let train = dir.join("id_train.parquet").display().to_string();
    let test = dir.join("id_test.parquet").display().to_string();
    for recipe in ["whitened", "paper"] {
        let model = tmp.path().join(format!("{recipe}.parquet"));
        let m = model.to_str().unwrap();
        let mut args = vec![
            "train", "--input", &train, "--label", "label", "--output", m, "--recipe", recipe,
        ];
        if recipe == "paper" {
            // Fewer epochs keep the test short; the routing is what is under test.
            args.extend(["--epochs", "10"]);
        }
        cli_ok(&args);
        let scored = tmp.path().join(format!("{recipe}_scored.parquet"));
        cli_ok(&[
            "score",
            "--model",
            m,
            "--input",
            &test,
            "--output",
            scored.to_str().unwrap(),
        ]);
        let b = read_parquet(&scored);
        let flags = b
            .column_by_name("reclag_is_ood")
            .unwrap()
            .as_boolean()
            .clone();
        let n = b.num_rows();
        let flagged = flags.true_count();
        let rate = flagged as f64 / n as f64;
        println!("{recipe}: {flagged} of {n} id_test rows flagged without a group ({rate:.4})");
        assert!(
            (0.02..=0.12).contains(&rate),
            "{recipe}: {rate} of ID rows flagged"
        );

        // SQL, the two-argument form: the same rows.
        let sql_out = tmp.path().join(format!("{recipe}_sql.parquet"));
        let table = format!("t={test}");
        let named = format!("m={m}");
        cli_ok(&[
            "sql",
            "--table",
            &table,
            "--model",
            &named,
            "SELECT reclag_is_ood('m', embedding) AS o, reclag_score('m', embedding) AS s, reclag_explain('m', embedding)['group'] AS g FROM t",
            "--output",
            sql_out.to_str().unwrap(),
        ]);
        // The scan may run in several partitions, so rows are compared as sorted
        // scores (each row's score is a function of the row alone).
        let sql = read_parquet(&sql_out);
        assert_eq!(
            sql.column_by_name("o").unwrap().as_boolean().true_count(),
            flagged
        );
        let sorted = |a: &dyn arrow_array::Array| {
            let mut v: Vec<u64> = a
                .as_primitive::<arrow_array::types::Float64Type>()
                .values()
                .iter()
                .map(|x| x.to_bits())
                .collect();
            v.sort();
            v
        };
        let score = b.column_by_name("reclag_score").unwrap();
        assert_eq!(
            sorted(sql.column_by_name("s").unwrap().as_ref()),
            sorted(score.as_ref())
        );
        assert_eq!(
            sql.column_by_name("g").unwrap().null_count(),
            0,
            "best routing names a group"
        );

        // Union mode stays reachable, and decides on the first step.
        let union_out = tmp.path().join(format!("{recipe}_union.parquet"));
        cli_ok(&[
            "score",
            "--model",
            m,
            "--input",
            &test,
            "--output",
            union_out.to_str().unwrap(),
            "--route",
            "union",
        ]);
        let u = read_parquet(&union_out);
        let ur = u
            .column_by_name("reclag_is_ood")
            .unwrap()
            .as_boolean()
            .true_count() as f64
            / n as f64;
        println!("{recipe}: union mode flags {ur:.4}");
        assert!(ur < 0.2, "{recipe}: union mode flags {ur}");
        let sql_union = tmp.path().join(format!("{recipe}_sql_union.parquet"));
        cli_ok(&[
            "sql",
            "--table",
            &table,
            "--model",
            &named,
            "SELECT reclag_is_ood('m#union', embedding) AS o FROM t",
            "--output",
            sql_union.to_str().unwrap(),
        ]);
        assert_eq!(
            read_parquet(&sql_union)
                .column_by_name("o")
                .unwrap()
                .as_boolean()
                .true_count(),
            u.column_by_name("reclag_is_ood")
                .unwrap()
                .as_boolean()
                .true_count()
        );

        // reclag filter (Polars): keeps exactly the rows score called ID.
        let kept = tmp.path().join(format!("{recipe}_kept.parquet"));
        cli_ok(&[
            "filter",
            "--model",
            m,
            "--input",
            &test,
            "--keep",
            "id",
            "--output",
            kept.to_str().unwrap(),
        ]);
        assert_eq!(read_parquet(&kept).num_rows(), n - flagged);
        // ... and in union mode, the rows union scoring flagged.
        let union_flagged = u
            .column_by_name("reclag_is_ood")
            .unwrap()
            .as_boolean()
            .true_count();
        let quarantined = tmp.path().join(format!("{recipe}_union_ood.parquet"));
        cli_ok(&[
            "filter",
            "--model",
            m,
            "--input",
            &test,
            "--keep",
            "ood",
            "--route",
            "union",
            "--output",
            quarantined.to_str().unwrap(),
        ]);
        assert_eq!(read_parquet(&quarantined).num_rows(), union_flagged);
        // Polars reaches union mode through `routed`, with the same flags.
        let model = std::sync::Arc::new(reclag::format::load(&model).unwrap());
        use polars::prelude::*;
        let df = LazyFrame::scan_parquet(PlRefPath::new(test.as_str()), ScanArgsParquet::default())
            .unwrap()
            .select([reclag_udfs::polars::routed(
                reclag_udfs::Output::IsOod,
                col("embedding"),
                &model,
                None,
                Route::Union,
            )])
            .collect()
            .unwrap();
        let polars_flagged = df
            .column("reclag_is_ood")
            .unwrap()
            .bool()
            .unwrap()
            .sum()
            .unwrap_or(0) as usize;
        assert_eq!(polars_flagged, union_flagged);
        assert_ne!(union_flagged, flagged, "union and best routing differ here");
    }
    let e = crate::common::cli_err(&[
        "filter",
        "--model",
        "m.parquet",
        "--input",
        &test,
        "--keep",
        "id",
        "--route",
        "union",
        "--group",
        "label",
        "--output",
        "x.parquet",
    ]);
    assert!(e.contains("cannot be used with"), "{e}");
}

/// §11 against the golden file: each case's best-route p-value from the stored
/// best-route calibration scores, its p-value under every group from that group's
/// own margins `A_g − τ_g`, and the Benjamini–Hochberg decision over the cases'
/// best-route p-values.
#[test]
fn golden_conformal_p_values_and_benjamini_hochberg() {
    use reclag::conformal::{Calibration, benjamini_hochberg};
    let Some(g) = json("spec/golden/whitened.json") else {
        return;
    };
    let best = Calibration::new(vecf(&g["calibration_scores_best"]));
    let tau = vecf(&g["tau"]);
    let own: Vec<Calibration> = (0..tau.len())
        .map(|k| Calibration::new(vecf(&g["calibration_scores_own"][k.to_string()])))
        .collect();
    let mut p_best = vec![];
    for (i, c) in g["cases"].as_array().unwrap().iter().enumerate() {
        let p = best.p_value(c["score"].as_f64().unwrap());
        near(
            p,
            c["p_value_best"].as_f64().unwrap(),
            1e-12,
            &format!("case {i} p_value_best"),
        );
        p_best.push(p);
        let energies = vecf(&c["energy_per_group"]);
        for (k, want) in vecf(&c["p_value_if_group"]).into_iter().enumerate() {
            let p = own[k].p_value(energies[k] - tau[k]);
            near(p, want, 1e-12, &format!("case {i} p_value_if_group[{k}]"));
        }
    }
    let bh = &g["benjamini_hochberg"];
    let want: Vec<bool> = bh["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_bool().unwrap())
        .collect();
    assert!(want.contains(&true) && want.contains(&false));
    assert_eq!(benjamini_hochberg(&p_best, bh["q"].as_f64().unwrap()), want);
}
