//! `reclag_explain(model, embedding [, group])`.

use std::sync::{Arc, OnceLock};

use datafusion::logical_expr::{Documentation, ScalarUDF};

use crate::function::{Output, ReclagFunc, doc};
use crate::registry::ModelRegistry;

fn documentation() -> &'static Documentation {
    static DOC: OnceLock<Documentation> = OnceLock::new();
    DOC.get_or_init(|| {
        doc(
            "Why a row scored as it did, as a struct: group (the group used, NULL for the union), nearest_memory (index of the most similar memory in it), energy (A_β(Ξx)), tau (its threshold), margin (energy − tau, equal to reclag_score), is_ood, steps (dynamics updates), and nearest_groups (up to 3 groups with the highest energy, each {group, energy, margin}: the class an OOD row resembles most). NULL for a NULL or non-finite embedding.",
            "SELECT id, reclag_explain('prod', embedding, label)['nearest_groups'] FROM events WHERE reclag_is_ood('prod', embedding, label)",
        )
    })
}

/// `reclag_explain`, resolving models through `registry`.
pub fn udf(registry: Arc<ModelRegistry>) -> ScalarUDF {
    ScalarUDF::new_from_impl(ReclagFunc::new(Output::Explain, registry, documentation()))
}

#[cfg(test)]
mod tests {
    use crate::test_util::*;

    #[tokio::test]
    async fn explanation_agrees_with_the_scores() {
        let (ctx, _) = test_ctx();
        let margin = f64_col(
            &ctx,
            "SELECT reclag_explain('m', e)['margin'], reclag_score('m', e) FROM t",
            0,
        )
        .await;
        let score = f64_col(&ctx, "SELECT reclag_score('m', e) FROM t", 0).await;
        assert_eq!(margin, score);
        let ood = bool_col(&ctx, "SELECT reclag_explain('m', e)['is_ood'] FROM t").await;
        let want = bool_col(&ctx, "SELECT reclag_is_ood('m', e) FROM t").await;
        assert_eq!(ood, want);
        // Row 0 sits next to memory 0 and converges to it.
        let near = i32_col(
            &ctx,
            "SELECT reclag_explain('m', e)['nearest_memory'] FROM t",
        )
        .await;
        let att = i32_col(&ctx, "SELECT reclag_attractor('m', e) FROM t").await;
        assert_eq!((near[0], att[0]), (Some(0), Some(0)));
        let steps = i32_col(&ctx, "SELECT reclag_explain('m', e)['steps'] FROM t").await;
        assert!(steps[0].is_some_and(|s| s >= 1) && steps[1].is_some_and(|s| s >= 1));
        // NULL and NaN embeddings explain to NULL.
        let nulls = bool_col(&ctx, "SELECT reclag_explain('m', e) IS NULL FROM t").await;
        assert_eq!(nulls, [Some(false), Some(false), Some(true), Some(true)]);
    }
}
