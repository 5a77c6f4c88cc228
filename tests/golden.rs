//! Reproduces every vector in `../shared/spec/golden/`.

use reclag::kernel::log_mean_exp;
use reclag::metrics::{auroc, average_precision, fpr_at_95_tpr, quantile_lower};
use reclag::train::{Adam, StepScratch, loss_and_grad_into};
use reclag::{GroupKey, Normalize, Route, Rows, ScoreOutput, Work, lyapunov};

use crate::common::{close, json, mat, model, vecf};

#[test]
fn scoring_f64_and_f32_paths() {
    let Some(g) = json("spec/golden/scoring.json") else {
        return;
    };
    let beta = g["beta"].as_f64().unwrap();
    let d = g["d"].as_u64().unwrap() as usize;
    let m = g["M"].as_u64().unwrap() as usize;
    assert_eq!(g["max_iter"].as_u64(), Some(16));
    assert_eq!(g["tol"].as_f64(), Some(1e-6));
    let xi: Vec<f64> = mat(&g["Xi"]).concat();
    let rows = mat(&g["rows"]);
    let cases = g["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 27);
    let mut steps_mismatch = Vec::new();
    for c in cases {
        let tau = c["tau"].as_f64().unwrap();
        let r = c["row"].as_u64().unwrap() as usize;
        let mdl = model(vec![(None, xi.clone(), m, tau)], d, beta, tau);
        let what = |k: &str| format!("tau={tau} row={r} {k}");

        // f64 input path: 1e-9 relative.
        let mut out = ScoreOutput::default();
        mdl.score_into(
            &Rows::dense_f64(&rows[r], d),
            None,
            Work::WithDynamics,
            &mut out,
        )
        .unwrap();
        assert!(out.valid[0]);
        close(
            out.energy[0],
            c["energy"].as_f64().unwrap(),
            1e-9,
            &what("energy"),
        );
        close(
            out.score[0],
            c["score"].as_f64().unwrap(),
            1e-9,
            &what("score"),
        );
        close(
            out.ood_probability[0],
            c["ood_probability"].as_f64().unwrap(),
            1e-9,
            &what("ood_probability"),
        );
        close(
            lyapunov(&xi, m, beta, tau, &rows[r]),
            c["lyapunov"].as_f64().unwrap(),
            1e-9,
            &what("lyapunov"),
        );
        assert_eq!(
            out.is_ood[0],
            c["is_ood"].as_bool().unwrap(),
            "{}",
            what("is_ood")
        );
        assert_eq!(
            out.attractor[0] as i64,
            c["attractor"].as_i64().unwrap(),
            "{}",
            what("attractor")
        );
        if out.steps[0] as u64 != c["steps"].as_u64().unwrap() {
            steps_mismatch.push(what("steps"));
        }

        // f32 input path: 1e-5 relative.
        let r32: Vec<f32> = rows[r].iter().map(|&v| v as f32).collect();
        let mut o32 = ScoreOutput::default();
        mdl.score_into(
            &Rows::dense_f32(&r32, d),
            None,
            Work::WithDynamics,
            &mut o32,
        )
        .unwrap();
        close(
            o32.energy[0],
            c["energy"].as_f64().unwrap(),
            1e-5,
            &what("f32 energy"),
        );
        close(
            o32.score[0],
            c["score"].as_f64().unwrap(),
            1e-5,
            &what("f32 score"),
        );
        assert_eq!(
            o32.is_ood[0],
            c["is_ood"].as_bool().unwrap(),
            "{}",
            what("f32 is_ood")
        );
        assert_eq!(
            o32.attractor[0] as i64,
            c["attractor"].as_i64().unwrap(),
            "{}",
            what("f32 attractor")
        );
    }
    // `steps` is informative in the golden file; we still match it exactly today.
    assert!(
        steps_mismatch.is_empty(),
        "steps differ: {steps_mismatch:?}"
    );
}

#[test]
fn scoring_all_rows_in_one_batch_matches_one_by_one() {
    let Some(g) = json("spec/golden/scoring.json") else {
        return;
    };
    let d = g["d"].as_u64().unwrap() as usize;
    let m = g["M"].as_u64().unwrap() as usize;
    let xi: Vec<f64> = mat(&g["Xi"]).concat();
    let rows = mat(&g["rows"]);
    let flat: Vec<f64> = rows.concat();
    let mdl = model(vec![(None, xi, m, 0.5)], d, 5.0, 0.5);
    let mut all = ScoreOutput::default();
    mdl.score_into(
        &Rows::dense_f64(&flat, d),
        None,
        Work::WithDynamics,
        &mut all,
    )
    .unwrap();
    for (r, row) in rows.iter().enumerate() {
        let mut one = ScoreOutput::default();
        mdl.score_into(&Rows::dense_f64(row, d), None, Work::WithDynamics, &mut one)
            .unwrap();
        assert_eq!(all.energy[r], one.energy[0]);
        assert_eq!(
            (all.is_ood[r], all.attractor[r], all.steps[r]),
            (one.is_ood[0], one.attractor[0], one.steps[0])
        );
    }
}

#[test]
fn preprocess_l2() {
    let Some(g) = json("spec/golden/preprocess.json") else {
        return;
    };
    for (x, want) in mat(&g["input"]).into_iter().zip(mat(&g["l2"])) {
        let mut y = x.clone();
        Normalize::L2.apply(&mut y);
        for (a, b) in y.iter().zip(&want) {
            close(*a, *b, 1e-12, "l2");
        }
    }
}

#[test]
fn training_step_loss_grad_and_adam() {
    let Some(g) = json("spec/golden/training_step.json") else {
        return;
    };
    let beta = g["beta"].as_f64().unwrap();
    assert_eq!(g["sigma2"].as_f64(), Some(1.0));
    let xi0 = mat(&g["Xi"]);
    let (m, d) = (xi0.len(), xi0[0].len());
    let mut xi: Vec<f64> = xi0.concat();
    let a = &g["adam"];
    let mut adam = Adam::new(
        m * d,
        a["lr"].as_f64().unwrap(),
        a["b1"].as_f64().unwrap(),
        a["b2"].as_f64().unwrap(),
        a["eps"].as_f64().unwrap(),
    );
    let mut grad = vec![0.0; m * d];
    let mut s = StepScratch::default();
    let loss = loss_and_grad_into(
        &xi,
        m,
        d,
        &mat(&g["batch"]).concat(),
        beta,
        &mut grad,
        &mut s,
    );
    close(loss, g["loss"].as_f64().unwrap(), 1e-9, "loss");
    for (a, b) in grad.iter().zip(mat(&g["grad"]).concat()) {
        close(*a, b, 1e-9, "grad");
    }
    adam.step(&mut xi, &grad);
    for (a, b) in xi.iter().zip(mat(&g["Xi_after_step1"]).concat()) {
        close(*a, b, 1e-9, "Xi after step 1");
    }
    let loss2 = loss_and_grad_into(
        &xi,
        m,
        d,
        &mat(&g["batch2"]).concat(),
        beta,
        &mut grad,
        &mut s,
    );
    close(loss2, g["loss2"].as_f64().unwrap(), 1e-9, "loss2");
    adam.step(&mut xi, &grad);
    for (a, b) in xi.iter().zip(mat(&g["Xi_after_step2"]).concat()) {
        close(*a, b, 1e-9, "Xi after step 2");
    }
}

#[test]
fn union_and_group_energies() {
    let Some(g) = json("spec/golden/union.json") else {
        return;
    };
    let beta = g["beta"].as_f64().unwrap();
    let a = mat(&g["groups"]["a"]);
    let b = mat(&g["groups"]["b"]);
    let d = a[0].len();
    let mdl = model(
        vec![
            (Some(GroupKey::Str("a".into())), a.concat(), a.len(), 0.0),
            (Some(GroupKey::Str("b".into())), b.concat(), b.len(), 0.0),
        ],
        d,
        beta,
        0.0,
    );
    let rows = mat(&g["rows"]).concat();
    let n = rows.len() / d;
    let view = Rows::dense_f64(&rows, d);
    let ga = mdl.resolve_str("a", "label").unwrap() as u32;
    let gb = mdl.resolve_str("b", "label").unwrap() as u32;
    for (sel, key) in [
        (Some(ga), "energy_group_a"),
        (Some(gb), "energy_group_b"),
        (None, "energy_union"),
    ] {
        let groups = vec![sel; n];
        let mut out = ScoreOutput::default();
        mdl.score_routed(
            &view,
            Some(&groups),
            Route::Union,
            Work::EnergyOnly,
            &mut out,
        )
        .unwrap();
        for (got, want) in out.energy.iter().zip(vecf(&g[key])) {
            close(*got, want, 1e-9, key);
        }
    }
    // The same union energy straight from the kernel.
    let (uxi, um) = mdl.union_memories();
    let h: Vec<f64> = (0..um)
        .map(|mu| reclag::kernel::dot(&uxi[mu * d..(mu + 1) * d], &rows[..d]))
        .collect();
    close(
        log_mean_exp(&h, beta),
        vecf(&g["energy_union"])[0],
        1e-9,
        "kernel union",
    );
}

#[test]
fn metrics() {
    let Some(g) = json("spec/golden/metrics.json") else {
        return;
    };
    let values = vecf(&g["values"]);
    for (q, want) in g["quantiles"].as_object().unwrap() {
        let got = quantile_lower(&values, q.parse().unwrap()).unwrap();
        close(got, want.as_f64().unwrap(), 1e-12, &format!("quantile {q}"));
    }
    let id = vecf(&g["id_scores"]);
    let ood = vecf(&g["ood_scores"]);
    close(
        auroc(&id, &ood),
        g["auroc"].as_f64().unwrap(),
        1e-12,
        "auroc",
    );
    close(
        fpr_at_95_tpr(&id, &ood),
        g["fpr_at_95tpr"].as_f64().unwrap(),
        1e-12,
        "fpr95",
    );
    close(
        average_precision(&id, &ood),
        g["aupr_in"].as_f64().unwrap(),
        1e-12,
        "aupr_in",
    );
    let neg = |v: &[f64]| v.iter().map(|x| -x).collect::<Vec<_>>();
    close(
        average_precision(&neg(&ood), &neg(&id)),
        g["aupr_out"].as_f64().unwrap(),
        1e-12,
        "aupr_out",
    );
    let r = reclag::metrics::report(&id, &ood);
    assert_eq!((r.n_id, r.n_ood), (id.len(), ood.len()));
}
