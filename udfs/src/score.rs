//! `reclag_score(model, embedding [, group])`.

use std::sync::{Arc, OnceLock};

use datafusion::logical_expr::{Documentation, ScalarUDF};

use crate::function::{Output, ReclagFunc, doc};
use crate::registry::ModelRegistry;

fn documentation() -> &'static Documentation {
    static DOC: OnceLock<Documentation> = OnceLock::new();
    DOC.get_or_init(|| {
        doc(
            "The RecLag margin `A_β(Ξ_g·pre(x)) − τ_g`: above 0 is the in-distribution side, at or below 0 the row starts in the origin's basin. Float64; NULL for a NULL or non-finite embedding.",
            "SELECT id, reclag_score('prod', embedding, label) AS s FROM events ORDER BY s LIMIT 10",
        )
    })
}

/// `reclag_score`, resolving models through `registry`.
pub fn udf(registry: Arc<ModelRegistry>) -> ScalarUDF {
    ScalarUDF::new_from_impl(ReclagFunc::new(Output::Score, registry, documentation()))
}

#[cfg(test)]
mod tests {
    use crate::test_util::*;

    #[tokio::test]
    async fn score_is_energy_minus_tau_and_null_for_bad_rows() {
        let (ctx, tau) = test_ctx();
        let r = f64_col(
            &ctx,
            "SELECT reclag_score('m', e) AS s, reclag_energy('m', e) AS a FROM t",
            0,
        )
        .await;
        let a = f64_col(&ctx, "SELECT reclag_energy('m', e) AS a FROM t", 0).await;
        assert_eq!(r.len(), 4);
        for i in [0, 1] {
            assert!((r[i].unwrap() - (a[i].unwrap() - tau)).abs() < 1e-12);
        }
        assert_eq!((r[2], r[3]), (None, None), "NULL and NaN rows give NULL");
    }
}
