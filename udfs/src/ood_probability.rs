//! `reclag_ood_probability(model, embedding [, group])`.

use std::sync::{Arc, OnceLock};

use datafusion::logical_expr::{Documentation, ScalarUDF};

use crate::function::{Output, ReclagFunc, doc};
use crate::registry::ModelRegistry;

fn documentation() -> &'static Documentation {
    static DOC: OnceLock<Documentation> = OnceLock::new();
    DOC.get_or_init(|| {
        doc(
            "Posterior probability of the OOD component, `σ(β(τ_g − A))`. Float64 in [0, 1]; NULL for a NULL or non-finite embedding.",
            "SELECT * FROM events WHERE reclag_ood_probability('prod', embedding, label) > 0.9",
        )
    })
}

/// `reclag_ood_probability`, resolving models through `registry`.
pub fn udf(registry: Arc<ModelRegistry>) -> ScalarUDF {
    ScalarUDF::new_from_impl(ReclagFunc::new(
        Output::OodProbability,
        registry,
        documentation(),
    ))
}

#[cfg(test)]
mod tests {
    use crate::test_util::*;

    #[tokio::test]
    async fn probability_is_in_unit_interval_and_monotone_in_score() {
        let (ctx, _) = test_ctx();
        let p = f64_col(&ctx, "SELECT reclag_ood_probability('m', e) FROM t", 0).await;
        let s = f64_col(&ctx, "SELECT reclag_score('m', e) FROM t", 0).await;
        assert!(p[0].unwrap() > 0.0 && p[0].unwrap() < 1.0);
        // Higher score (more ID) means lower OOD probability.
        assert_eq!(s[0].unwrap() > s[1].unwrap(), p[0].unwrap() < p[1].unwrap());
    }
}
