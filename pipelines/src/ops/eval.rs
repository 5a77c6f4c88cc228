//! `reclag eval`: AUROC / FPR95 / AUPR of the model and of the §9 baselines, per OOD set.

use reclag::baselines::{self, Baseline, Reference};
use reclag::metrics::{Report, report};
use reclag::{GroupKey, Model, ScoreOutput, Work};

use crate::error::{Error, Result};
use crate::io::{batch_column, open_all};
use crate::ops::route::Routing;
use crate::ops::train::TrainJob;

#[derive(Clone, Debug)]
pub struct EvalJob {
    id: Vec<String>,
    ood: Vec<(String, String)>,
    embedding: String,
    routing: Routing,
    baselines: Vec<Baseline>,
    logits: Option<String>,
    train: Vec<String>,
    label: Option<String>,
    knn_k: usize,
    reference_rows_per_group: Option<usize>,
    stores: std::sync::Arc<crate::store::Stores>,
}

impl EvalJob {
    /// AUROC and FPR95 of the model with ID rows `id` against each named OOD set
    /// `(name, URL)`, through `stores`: the column `embedding`, rows routed by best
    /// margin, no baselines, until set otherwise.
    pub fn new(
        stores: std::sync::Arc<crate::store::Stores>,
        id: Vec<String>,
        ood: Vec<(String, String)>,
    ) -> Self {
        EvalJob {
            id,
            ood,
            embedding: "embedding".into(),
            routing: Routing::Ungrouped(reclag::Route::default()),
            baselines: vec![],
            logits: None,
            train: vec![],
            label: None,
            knn_k: 50,
            reference_rows_per_group: None,
            stores,
        }
    }

    setters! {
        embedding: String,
        routing: Routing,
    }

    /// Baselines evaluated beside the model, fitted on the `train` rows (grouped by
    /// `label`, at most `reference_rows_per_group` a group); the logit ones read
    /// `logits`. KNN takes `knn_k` neighbours.
    pub fn baselines(
        mut self,
        baselines: Vec<Baseline>,
        train: Vec<String>,
        label: Option<String>,
        reference_rows_per_group: Option<usize>,
    ) -> Self {
        self.baselines = baselines;
        self.train = train;
        self.label = label;
        self.reference_rows_per_group = reference_rows_per_group;
        self
    }

    setters! {
        logits: Option<String>,
        knn_k: usize,
    }

    /// One row per OOD set: the model's metrics and each baseline's.
    pub fn run(&self, model: &Model) -> Result<Vec<EvalRow>> {
        run(model, self)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct EvalRow {
    pub ood_set: String,
    pub detector: String,
    pub report: Report,
}

/// The valid rows of one table: reclag scores, preprocessed embeddings, routes, logits.
struct Table {
    scores: Vec<f64>,
    pre: Vec<f64>,
    routes: Vec<Option<GroupKey>>,
    logits: Vec<f64>,
    classes: usize,
}

fn load_table(model: &Model, inputs: &[String], job: &EvalJob, want_logits: bool) -> Result<Table> {
    let want_pre = job.baselines.iter().any(|b| !b.needs_logits());
    let files = open_all(&job.stores, inputs)?;
    let d = model.dim();
    let mut t = Table {
        scores: Vec::new(),
        pre: Vec::new(),
        routes: Vec::new(),
        logits: Vec::new(),
        classes: 0,
    };
    let mut out = ScoreOutput::default();
    let mut buf = vec![0.0; d];
    for f in files {
        let path = f.path.clone();
        f.column_index(&job.embedding)?;
        if let Some(c) = job.routing.column() {
            f.column_index(c)?;
        }
        let logits_col = job.logits.as_deref().filter(|_| want_logits);
        if let Some(c) = logits_col {
            f.column_index(c)?;
        }
        for batch in f.read(None)? {
            let batch = batch?;
            let col = batch_column(&batch, &job.embedding, &path)?;
            let rows = reclag::arrow::embedding_rows(col.as_ref(), &job.embedding, Some(d))
                .map_err(Error::in_file(&path))?;
            let groups = job.routing.resolve(model, &batch, &path)?;
            model.score_routed(
                &rows,
                groups.as_deref(),
                job.routing.route(),
                Work::EnergyOnly,
                &mut out,
            )?;
            let lrows = match logits_col {
                Some(c) => Some(
                    reclag::arrow::embedding_rows(
                        batch_column(&batch, c, &path)?.as_ref(),
                        c,
                        None,
                    )
                    .map_err(Error::in_file(&path))?,
                ),
                None => None,
            };
            for i in 0..batch.num_rows() {
                if !out.valid[i] {
                    continue;
                }
                // Preprocessed rows are only needed by the reference baselines.
                if want_pre {
                    rows.gather(i, &mut buf);
                    model.normalize().apply(&mut buf);
                    t.pre.extend_from_slice(&buf);
                }
                t.scores.push(out.score[i]);
                let g = groups.as_ref().and_then(|g| g[i]);
                t.routes
                    .push(g.and_then(|g| model.groups()[g as usize].key.clone()));
                if let Some(l) = &lrows {
                    t.classes = l.dim();
                    let mut lb = vec![0.0; l.dim()];
                    if !l.gather(i, &mut lb) {
                        lb.fill(f64::NAN);
                    }
                    t.logits.extend_from_slice(&lb);
                }
            }
        }
    }
    Ok(t)
}

fn reference(model: &Model, job: &EvalJob) -> Result<Reference> {
    let (set, _) = TrainJob::new(job.stores.clone(), job.train.clone(), "")
        .embedding(job.embedding.clone())
        .label(job.label.clone())
        .max_rows_per_group(job.reference_rows_per_group)
        .collect()?;
    if set.dim() != model.dim() {
        return Err(Error::Core(reclag::Error::Dimension {
            column: job.embedding.clone(),
            expected: model.dim(),
            found: set.dim(),
            row: None,
        }));
    }
    let d = set.dim();
    let groups = set
        .groups()
        .map(|(k, rows)| {
            let mut x: Vec<f64> = rows.iter().map(|&v| f64::from(v)).collect();
            x.chunks_mut(d).for_each(|r| model.normalize().apply(r));
            (k.clone(), x)
        })
        .collect();
    Ok(Reference::new(d, groups)?)
}

fn baseline_scores(
    b: Baseline,
    t: &Table,
    r: Option<&Reference>,
    model: &Model,
    k: usize,
) -> Result<Vec<f64>> {
    let r = || r.expect("checked: reference present for reference baselines");
    Ok(match b {
        Baseline::He => baselines::he(r(), model.beta(), &t.pre, &t.routes),
        Baseline::She => baselines::she(r(), &t.pre, &t.routes),
        Baseline::Mahalanobis => baselines::mahalanobis(r(), &t.pre)?,
        Baseline::Knn => baselines::knn(r(), &t.pre, k),
        Baseline::Msp => baselines::msp(&t.logits, t.classes),
        Baseline::Energy => baselines::energy(&t.logits, t.classes),
    })
}

fn run(model: &Model, job: &EvalJob) -> Result<Vec<EvalRow>> {
    if job.ood.is_empty() {
        return Err(Error::Usage("give at least one --ood NAME=PATH".into()));
    }
    let needs_ref: Vec<&str> = job
        .baselines
        .iter()
        .filter(|b| !b.needs_logits())
        .map(|b| b.name())
        .collect();
    if !needs_ref.is_empty() && job.train.is_empty() {
        return Err(Error::Usage(format!(
            "baselines {} need the ID training table: add --train PATH",
            needs_ref.join(", ")
        )));
    }
    let want_logits = job.baselines.iter().any(|b| b.needs_logits());
    if want_logits && job.logits.is_none() {
        return Err(Error::Usage(
            "baselines msp and energy need a logits column: add --logits COL (or --group-from-logits COL)".into(),
        ));
    }
    let reference = if needs_ref.is_empty() {
        None
    } else {
        Some(reference(model, job)?)
    };
    let id = load_table(model, &job.id, job, want_logits)?;
    if id.scores.is_empty() {
        return Err(Error::Usage(format!(
            "the ID table {} has no non-null rows",
            job.id.join(", ")
        )));
    }
    let mut id_base = Vec::new();
    for &b in &job.baselines {
        id_base.push(baseline_scores(
            b,
            &id,
            reference.as_ref(),
            model,
            job.knn_k,
        )?);
    }
    let mut rows = Vec::new();
    for (name, path) in &job.ood {
        let ood = load_table(model, std::slice::from_ref(path), job, want_logits)?;
        rows.push(EvalRow {
            ood_set: name.clone(),
            detector: "reclag".into(),
            report: report(&id.scores, &ood.scores),
        });
        for (&b, idb) in job.baselines.iter().zip(&id_base) {
            let ob = baseline_scores(b, &ood, reference.as_ref(), model, job.knn_k)?;
            rows.push(EvalRow {
                ood_set: name.clone(),
                detector: b.name().into(),
                report: report(idb, &ob),
            });
        }
    }
    Ok(rows)
}

pub fn to_json(rows: &[EvalRow]) -> serde_json::Value {
    let num = |v: f64| {
        if v.is_finite() {
            serde_json::json!(v)
        } else {
            serde_json::Value::Null
        }
    };
    serde_json::json!({
        "results": rows.iter().map(|r| serde_json::json!({
            "ood_set": r.ood_set,
            "detector": r.detector,
            "auroc": num(r.report.auroc),
            "fpr95": num(r.report.fpr95),
            "aupr_in": num(r.report.aupr_in),
            "aupr_out": num(r.report.aupr_out),
            "n_id": r.report.n_id,
            "n_ood": r.report.n_ood,
        })).collect::<Vec<_>>()
    })
}

/// A wide table: one line per OOD set, `AUROC / FPR95` per detector.
pub fn to_table(rows: &[EvalRow]) -> String {
    let mut detectors: Vec<&str> = Vec::new();
    let mut sets: Vec<&str> = Vec::new();
    for r in rows {
        if !detectors.contains(&r.detector.as_str()) {
            detectors.push(&r.detector);
        }
        if !sets.contains(&r.ood_set.as_str()) {
            sets.push(&r.ood_set);
        }
    }
    let w0 = sets
        .iter()
        .map(|s| s.len())
        .max()
        .unwrap_or(0)
        .max("ood_set".len());
    let cell = 13;
    let mut s = format!("{:<w0$}", "ood_set");
    for d in &detectors {
        s += &format!(" | {d:^cell$}");
    }
    s += "\n";
    s += &"-".repeat(w0);
    for _ in &detectors {
        s += &format!("-+-{}", "-".repeat(cell));
    }
    s += "\n";
    for set in &sets {
        s += &format!("{set:<w0$}");
        for d in &detectors {
            let r = rows.iter().find(|r| r.ood_set == *set && r.detector == *d);
            let c = r.map_or("-".to_string(), |r| {
                format!("{:.3} / {:.3}", r.report.auroc, r.report.fpr95)
            });
            s += &format!(" | {c:^cell$}");
        }
        s += "\n";
    }
    s += "cells: AUROC / FPR@95TPR (ID = positive class; higher AUROC and lower FPR are better)\n";
    s
}

/// Parses `NAME=PATH`.
pub fn parse_named(s: &str) -> std::result::Result<(String, String), String> {
    match s.split_once('=') {
        Some((n, p)) if !n.is_empty() && !p.is_empty() => Ok((n.to_string(), p.to_string())),
        _ => Err(format!("expected NAME=PATH, found '{s}'")),
    }
}
