//! `reclag_energy(model, embedding [, group])`.

use std::sync::{Arc, OnceLock};

use datafusion::logical_expr::{Documentation, ScalarUDF};

use crate::function::{Output, ReclagFunc, doc};
use crate::registry::ModelRegistry;

fn documentation() -> &'static Documentation {
    static DOC: OnceLock<Documentation> = OnceLock::new();
    DOC.get_or_init(|| {
        doc(
            "The raw log-mean-exp Hopfield energy `A_β(Ξ_g·pre(x))`, without the threshold. Float64; NULL for a NULL or non-finite embedding.",
            "SELECT approx_percentile_cont(reclag_energy('prod', embedding), 0.05) FROM events",
        )
    })
}

/// `reclag_energy`, resolving models through `registry`.
pub fn udf(registry: Arc<ModelRegistry>) -> ScalarUDF {
    ScalarUDF::new_from_impl(ReclagFunc::new(Output::Energy, registry, documentation()))
}

#[cfg(test)]
mod tests {
    use crate::test_util::*;

    #[tokio::test]
    async fn energy_matches_the_core() {
        let (ctx, _) = test_ctx();
        let got = f64_col(&ctx, "SELECT reclag_energy('m', e) FROM t", 0).await;
        let want = core_scores();
        assert_eq!(got[0], Some(want.energy[0]));
        assert_eq!(got[1], Some(want.energy[1]));
    }
}
