use std::path::PathBuf;

use reclag::{Group, GroupKey, Model, ModelParts, Normalize, Provenance, CalibratedOn};

/// `../shared` beside the checkout; `None` (with a printed reason) where a user's clone
/// lacks it. CI always has it, and there `RECLAG_REQUIRE_SHARED=1` turns a skip into a
/// failure so a broken path cannot silently pass.
pub fn shared(sub: &str) -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("shared").join(sub);
    if p.exists() {
        Some(p)
    } else {
        if std::env::var("RECLAG_REQUIRE_SHARED").is_ok_and(|v| v == "1") {
            panic!("{} is required (RECLAG_REQUIRE_SHARED=1) but missing", p.display());
        }
        eprintln!("SKIP: {} not found (tests that need the shared data are skipped)", p.display());
        None
    }
}

pub fn json(sub: &str) -> Option<serde_json::Value> {
    let p = shared(sub)?;
    Some(serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap())
}

pub fn mat(v: &serde_json::Value) -> Vec<Vec<f64>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect())
        .collect()
}

pub fn vecf(v: &serde_json::Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

/// A model with explicit memories, for golden and property tests.
pub fn model(groups: Vec<(Option<GroupKey>, Vec<f64>, usize, f64)>, d: usize, beta: f64, tau_star: f64) -> Model {
    Model::new(ModelParts {
        d,
        beta,
        normalize: Normalize::None,
        max_iter: 16,
        tol: 1e-6,
        groups: groups
            .into_iter()
            .map(|(key, xi, m, tau)| Group {
                key,
                xi,
                m,
                tau,
                n_train: 0,
                n_calibration: 0,
                calibrated_on: CalibratedOn::Train,
            })
            .collect(),
        tau_star,
        provenance: Provenance::default(),
    })
    .unwrap()
}

/// `|a − b| ≤ rel·max(|a|,|b|)` (exact equality for zeros and infinities).
#[track_caller]
pub fn close(a: f64, b: f64, rel: f64, what: &str) {
    let ok = a == b || (a - b).abs() <= rel * a.abs().max(b.abs());
    assert!(ok, "{what}: got {a}, expected {b} (rel tol {rel})");
}
