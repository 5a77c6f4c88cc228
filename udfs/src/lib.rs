//! DataFusion SQL functions over the reclag core:
//!
//! ```sql
//! SELECT id, reclag_score('prod', embedding, label) AS s
//! FROM events
//! WHERE reclag_is_ood('prod', embedding, label)
//! ```
//!
//! Each function takes `(model, embedding [, group])`. `model` is a string literal: a
//! name registered in the [`ModelRegistry`], or a model file path or URL. Types are checked
//! when the query is planned; each batch makes one call into the core.

pub mod attractor;
#[cfg(feature = "proto")]
pub mod codec;
pub mod energy;
pub mod explain;
pub mod function;
pub mod is_ood;
pub mod ood_probability;
pub mod p_value;
#[cfg(feature = "polars")]
pub mod polars;
pub mod registry;
pub mod score;

use std::sync::Arc;

use datafusion::execution::context::SessionContext;
use datafusion::logical_expr::ScalarUDF;

#[cfg(feature = "proto")]
pub use codec::ReclagCodec;
pub use function::Output;
pub use registry::{ModelPin, ModelRegistry};

/// Every reclag function, resolving models through `models`.
pub fn functions(models: Arc<ModelRegistry>) -> Vec<ScalarUDF> {
    vec![
        score::udf(models.clone()),
        energy::udf(models.clone()),
        ood_probability::udf(models.clone()),
        is_ood::udf(models.clone()),
        attractor::udf(models.clone()),
        p_value::udf(models.clone()),
        explain::udf(models),
    ]
}

/// Registers every reclag function on `ctx`, resolving models through `models`.
pub fn register_all(ctx: &SessionContext, models: Arc<ModelRegistry>) {
    for udf in functions(models) {
        ctx.register_udf(udf);
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    use std::sync::Arc;

    use arrow_array::builder::{FixedSizeListBuilder, Float32Builder};
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float64Type, Int32Type};
    use arrow_array::{ArrayRef, RecordBatch};
    use datafusion::execution::context::SessionContext;
    use reclag::{
        CalibratedOn, Group, Model, ModelParts, Normalize, Provenance, Rows, ScoreOutput, Work,
    };

    use super::{ModelRegistry, register_all};

    pub const TAU: f64 = 0.8;

    pub fn model() -> Model {
        model_tau(TAU)
    }

    /// Two memories along the axes of a 3-d space, with threshold `tau`.
    pub fn model_tau(tau: f64) -> Model {
        Model::new(ModelParts {
            d: 3,
            beta: 5.0,
            normalize: Normalize::None,
            max_iter: 16,
            tol: 1e-6,
            groups: vec![Group {
                key: None,
                xi: vec![2.0, 0.0, 0.0, 0.0, 2.0, 0.0],
                m: 2,
                tau,
                n_train: 0,
                n_calibration: 0,
                calibrated_on: CalibratedOn::Train,
            }],
            tau_star: tau,
            provenance: Provenance::default(),
            whitening: None,
            beta_search: None,
        })
        .unwrap()
    }

    /// Rows: near memory 0 (ID), a small vector (OOD), NULL, NaN.
    pub const ROWS: [[f32; 3]; 2] = [[0.9, 0.1, 0.0], [0.05, 0.05, 0.3]];

    pub fn core_scores() -> ScoreOutput {
        let flat: Vec<f32> = ROWS.concat();
        let mut out = ScoreOutput::default();
        model()
            .score_into(
                &Rows::dense_f32(&flat, 3),
                None,
                Work::WithDynamics,
                &mut out,
            )
            .unwrap();
        out
    }

    pub fn test_ctx() -> (SessionContext, f64) {
        let mut b = FixedSizeListBuilder::new(Float32Builder::new(), 3);
        for r in ROWS {
            b.values().append_slice(&r);
            b.append(true);
        }
        b.values().append_slice(&[0.0; 3]);
        b.append(false);
        b.values().append_slice(&[f32::NAN, 0.0, 0.0]);
        b.append(true);
        let batch = RecordBatch::try_from_iter([("e", Arc::new(b.finish()) as ArrayRef)]).unwrap();
        let ctx = SessionContext::new();
        ctx.register_batch("t", batch).unwrap();
        let reg = ModelRegistry::new();
        reg.register("m", Arc::new(model()));
        register_all(&ctx, reg);
        (ctx, TAU)
    }

    async fn collect(ctx: &SessionContext, sql: &str) -> Vec<RecordBatch> {
        ctx.sql(sql).await.unwrap().collect().await.unwrap()
    }

    pub async fn f64_col(ctx: &SessionContext, sql: &str, col: usize) -> Vec<Option<f64>> {
        collect(ctx, sql)
            .await
            .iter()
            .flat_map(|b| {
                b.column(col)
                    .as_primitive::<Float64Type>()
                    .iter()
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    pub async fn i32_col(ctx: &SessionContext, sql: &str) -> Vec<Option<i32>> {
        collect(ctx, sql)
            .await
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_primitive::<Int32Type>()
                    .iter()
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    pub async fn bool_col(ctx: &SessionContext, sql: &str) -> Vec<Option<bool>> {
        collect(ctx, sql)
            .await
            .iter()
            .flat_map(|b| b.column(0).as_boolean().iter().collect::<Vec<_>>())
            .collect()
    }

    pub async fn sql_err(ctx: &SessionContext, sql: &str) -> String {
        match ctx.sql(sql).await {
            Err(e) => e.to_string(),
            Ok(df) => match df.collect().await {
                Err(e) => e.to_string(),
                Ok(_) => panic!("query should fail: {sql}"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::builder::{FixedSizeListBuilder, Float32Builder};
    use arrow_array::{ArrayRef, RecordBatch};

    use crate::test_util::*;

    #[tokio::test]
    async fn planning_errors_name_the_problem() {
        let (ctx, _) = test_ctx();
        let e = sql_err(&ctx, "SELECT reclag_score('nope', e) FROM t").await;
        assert!(
            e.contains("model 'nope' is not registered (registered: m)"),
            "{e}"
        );
        let e = sql_err(&ctx, "SELECT reclag_score(e, e) FROM t").await;
        assert!(e.contains("first argument must be a string literal"), "{e}");
        let e = sql_err(&ctx, "SELECT reclag_score('m', e, 1.5) FROM t").await;
        assert!(e.contains("expected an integer or string type"), "{e}");
        // A FixedSizeList of the wrong size fails when planning, naming the column.
        let mut b = FixedSizeListBuilder::new(Float32Builder::new(), 2);
        b.values().append_slice(&[1.0, 2.0]);
        b.append(true);
        let batch = RecordBatch::try_from_iter([("v2", Arc::new(b.finish()) as ArrayRef)]).unwrap();
        ctx.register_batch("w", batch).unwrap();
        let e = ctx
            .sql("SELECT reclag_score('m', v2) FROM w")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("column 'v2': expected embedding dimension 3, found 2"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn functions_are_documented() {
        use datafusion::execution::FunctionRegistry;
        let (ctx, _) = test_ctx();
        for name in [
            "reclag_score",
            "reclag_energy",
            "reclag_ood_probability",
            "reclag_is_ood",
            "reclag_attractor",
            "reclag_explain",
            "reclag_p_value",
        ] {
            let udf = ctx.udf(name).unwrap();
            let doc = udf.documentation().expect("documented");
            assert!(
                !doc.description.is_empty() && doc.arguments.as_ref().is_some_and(|a| a.len() == 3)
            );
        }
    }
}
