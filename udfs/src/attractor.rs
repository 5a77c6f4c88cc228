//! `reclag_attractor(model, embedding [, group])`.

use std::sync::{Arc, OnceLock};

use datafusion::logical_expr::{Documentation, ScalarUDF};

use crate::function::{Output, ReclagFunc, doc};
use crate::registry::ModelRegistry;

fn documentation() -> &'static Documentation {
    static DOC: OnceLock<Documentation> = OnceLock::new();
    DOC.get_or_init(|| {
        doc(
            "The memory pattern (0-based index within the group, or within the union when no group is given) that the row converges to, or -1 when it falls into the origin. Int32; NULL for a NULL or non-finite embedding.",
            "SELECT reclag_attractor('prod', embedding, label) AS a, count(*) FROM events GROUP BY a",
        )
    })
}

/// `reclag_attractor`, resolving models through `registry`.
pub fn udf(registry: Arc<ModelRegistry>) -> ScalarUDF {
    ScalarUDF::new_from_impl(ReclagFunc::new(
        Output::Attractor,
        registry,
        documentation(),
    ))
}

#[cfg(test)]
mod tests {
    use crate::test_util::*;

    #[tokio::test]
    async fn attractor_is_minus_one_exactly_for_ood_rows() {
        let (ctx, _) = test_ctx();
        let a = i32_col(&ctx, "SELECT reclag_attractor('m', e) FROM t").await;
        let o = bool_col(&ctx, "SELECT reclag_is_ood('m', e) FROM t").await;
        for i in 0..2 {
            assert_eq!(a[i] == Some(-1), o[i] == Some(true));
        }
        assert_eq!(a[2], None);
    }
}
