//! `reclag_is_ood(model, embedding [, group])`.

use std::sync::{Arc, OnceLock};

use datafusion::logical_expr::{Documentation, ScalarUDF};

use crate::function::{Output, ReclagFunc, doc};
use crate::registry::ModelRegistry;

fn documentation() -> &'static Documentation {
    static DOC: OnceLock<Documentation> = OnceLock::new();
    DOC.get_or_init(|| {
        doc(
            "Whether the row's RecLag trajectory reaches the origin (the OOD attractor). Boolean; NULL for a NULL or non-finite embedding.",
            "SELECT id FROM events WHERE reclag_is_ood('prod', embedding, label)",
        )
    })
}

/// `reclag_is_ood`, resolving models through `registry`.
pub fn udf(registry: Arc<ModelRegistry>) -> ScalarUDF {
    ScalarUDF::new_from_impl(ReclagFunc::new(Output::IsOod, registry, documentation()))
}

#[cfg(test)]
mod tests {
    use crate::test_util::*;

    #[tokio::test]
    async fn is_ood_matches_the_core_dynamics() {
        let (ctx, _) = test_ctx();
        let got = bool_col(&ctx, "SELECT reclag_is_ood('m', e) FROM t").await;
        let want = core_scores();
        assert_eq!(got[..2], [Some(want.is_ood[0]), Some(want.is_ood[1])]);
        assert_eq!(got[2..], [None, None]);
        // The two test rows straddle the threshold: one is captured, one is not.
        assert_ne!(want.is_ood[0], want.is_ood[1]);
    }
}
