//! `reclag_p_value(model, embedding [, group])`.

use std::sync::{Arc, OnceLock};

use datafusion::logical_expr::{Documentation, ScalarUDF};

use crate::function::{Output, ReclagFunc, doc};
use crate::registry::ModelRegistry;

fn documentation() -> &'static Documentation {
    static DOC: OnceLock<Documentation> = OnceLock::new();
    DOC.get_or_init(|| {
        doc(
            "Conformal p-value of the row (spec §11): `(1 + #{c ≤ s}) / (n + 1)` over the model's n calibration scores of the same kind as the row's score s (its group's own calibration margins when routed by a group, the best-route scores of all calibration rows otherwise). Small means unlike the ID data; for rows exchangeable with the calibration rows, P(p ≤ α) ≤ α. Float64 in (0, 1]; NULL for a NULL or non-finite embedding. Needs a model with calibration scores (`reclag train`, or `reclag calibrate` for an older model file).",
            "SELECT id FROM events WHERE reclag_p_value('prod', embedding, label) < 0.01",
        )
    })
}

/// `reclag_p_value`, resolving models through `registry`.
pub fn udf(registry: Arc<ModelRegistry>) -> ScalarUDF {
    ScalarUDF::new_from_impl(ReclagFunc::new(Output::PValue, registry, documentation()))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use reclag::conformal::{Calibration, CalibrationSets};

    use crate::test_util::*;

    /// Calibration scores around the two test rows' scores: the ID row beats 3 of
    /// 4, the OOD row none.
    fn calibrated() -> reclag::Model {
        let s = core_scores().score;
        let c = Calibration::new([s[1] - 1.0, s[0] - 0.2, s[0] - 0.1, s[0] - 0.05, s[0] + 0.3]);
        model()
            .with_calibration(CalibrationSets {
                ood_rate: 0.05,
                own: vec![c.clone()],
                best: c.clone(),
                union: c,
            })
            .unwrap()
    }

    #[tokio::test]
    async fn p_values_count_calibration_scores_at_or_below_the_row() {
        let (ctx, _) = test_ctx();
        let reg = crate::ModelRegistry::new();
        reg.register("c", Arc::new(calibrated()));
        reg.register("m", Arc::new(model()));
        crate::register_all(&ctx, reg);
        let p = f64_col(&ctx, "SELECT reclag_p_value('c', e) FROM t", 0).await;
        // (1 + 4) / 6 for the ID row, (1 + 1) / 6 for the OOD row; NULL and NaN rows
        // have none.
        assert_eq!(p, [Some(5.0 / 6.0), Some(2.0 / 6.0), None, None]);
        let e = sql_err(&ctx, "SELECT reclag_p_value('m', e) FROM t").await;
        assert!(
            e.contains("reclag_p_value: the model has no calibration scores")
                && e.contains("reclag calibrate"),
            "{e}"
        );
    }
}
