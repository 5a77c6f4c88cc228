//! Polars expressions over the reclag core, with the semantics, null rules and
//! messages of the SQL functions:
//!
//! ```ignore
//! use polars::prelude::*;
//! let clean = LazyFrame::scan_parquet(path, Default::default())?
//!     .filter(reclag_udfs::polars::is_ood(col("embedding"), &model, Some(col("label"))).not())
//!     .sink_parquet(...)?;
//! ```
//!
//! Each expression takes an embedding column of `Array(Float32|Float64, d)` or
//! `List(Float32|Float64)` and an optional group expression (integer or string; a
//! null group routes the row by best margin, or by [`routed`]'s choice). Output types are declared, so a lazy schema resolves
//! before anything runs, and type errors (a wrong `Array` width, a float group column)
//! surface there. The expressions are elementwise: they run batch by batch in
//! Polars' streaming engine. Each chunk is handed to the core as a zero-copy Arrow
//! view ([`bridge`]) in one call; the output column is named after the SQL function
//! (`reclag_score`, ...), so `with_columns` adds a column rather than replacing the
//! embedding.

pub mod bridge;

use std::sync::{Arc, OnceLock};

use polars::prelude::*;
use reclag::Model;

use crate::function::Output;

/// The RecLag margin `A_β(Ξ_g·pre(x)) − τ_g` (Float64); see `reclag_score`.
pub fn score(embedding: Expr, model: &Arc<Model>, group: Option<Expr>) -> Expr {
    reclag_expr(Output::Score, embedding, model, group)
}

/// The memory-space energy `A_β` (Float64); see `reclag_energy`.
pub fn energy(embedding: Expr, model: &Arc<Model>, group: Option<Expr>) -> Expr {
    reclag_expr(Output::Energy, embedding, model, group)
}

/// The calibrated OOD probability (Float64); see `reclag_ood_probability`.
pub fn ood_probability(embedding: Expr, model: &Arc<Model>, group: Option<Expr>) -> Expr {
    reclag_expr(Output::OodProbability, embedding, model, group)
}

/// Whether the row's trajectory ends at the origin (Boolean); see `reclag_is_ood`.
pub fn is_ood(embedding: Expr, model: &Arc<Model>, group: Option<Expr>) -> Expr {
    reclag_expr(Output::IsOod, embedding, model, group)
}

/// The attractor index, −1 for the origin (Int32); see `reclag_attractor`.
pub fn attractor(embedding: Expr, model: &Arc<Model>, group: Option<Expr>) -> Expr {
    reclag_expr(Output::Attractor, embedding, model, group)
}

/// A struct per row: group, nearest memory, energy, τ, margin, OOD flag, steps and
/// the nearest groups; see `reclag_explain`.
pub fn explain(embedding: Expr, model: &Arc<Model>, group: Option<Expr>) -> Expr {
    reclag_expr(Output::Explain, embedding, model, group)
}

/// §11's conformal p-value against the model's calibration scores (Float64); see
/// `reclag_p_value`.
pub fn p_value(embedding: Expr, model: &Arc<Model>, group: Option<Expr>) -> Expr {
    reclag_expr(Output::PValue, embedding, model, group)
}

/// Any of the expressions above with the route of rows without a group: `Route::Best`
/// (what they use) or `Route::Union`, every group's memories at once with the union
/// threshold τ* (spec §4), as SQL's `'model#union'` argument asks:
///
/// ```ignore
/// routed(Output::IsOod, col("embedding"), &model, None, Route::Union)
/// ```
pub fn routed(
    output: Output,
    embedding: Expr,
    model: &Arc<Model>,
    group: Option<Expr>,
    route: reclag::Route,
) -> Expr {
    let (for_type, for_run) = (model.clone(), model.clone());
    let args: Vec<Expr> = group.into_iter().collect();
    embedding
        .map_many(
            move |cols: &mut [Column]| evaluate(output, &for_run, cols, route),
            &args,
            move |_schema: &Schema, fields: &[Field]| output_field(output, &for_type, fields),
        )
        .alias(output.function_name())
}

fn reclag_expr(output: Output, embedding: Expr, model: &Arc<Model>, group: Option<Expr>) -> Expr {
    routed(output, embedding, model, group, reclag::Route::Best)
}

/// The declared output type, after the planning-time checks SQL makes: the embedding
/// type and width, and the group type. Public for expression plugins (the Python
/// package), which declare types through their own entry points.
pub fn output_field(output: Output, model: &Model, fields: &[Field]) -> PolarsResult<Field> {
    let name = output.function_name();
    let emb = &fields[0];
    let dt = bridge::arrow_rs_type(emb)?;
    if let Err(e) = reclag::arrow::check_embedding_type(&dt, emb.name(), Some(model.dim())) {
        polars_bail!(SchemaMismatch: "{name}: {e}");
    }
    if let Err(e) = output.check_model(model) {
        polars_bail!(InvalidOperation: "{name}: {e}");
    }
    if let Some(g) = fields.get(1) {
        let t = g.dtype();
        let ok =
            t.is_integer() || t.is_string() || t.is_null() || t.is_categorical() || t.is_enum();
        if !ok {
            polars_bail!(SchemaMismatch:
                "{name}: group argument '{}' has type {}; expected an integer or string type (NULL for union mode)",
                g.name(),
                bridge::arrow_rs_type(g)?
            );
        }
    }
    Ok(Field::new(name.into(), output_dtype(output)?))
}

fn output_dtype(output: Output) -> PolarsResult<DataType> {
    static EXPLAIN: OnceLock<DataType> = OnceLock::new();
    if output == Output::Explain {
        if let Some(dt) = EXPLAIN.get() {
            return Ok(dt.clone());
        }
        let dt = bridge::polars_type(&reclag::arrow::explain_type())?;
        return Ok(EXPLAIN.get_or_init(|| dt).clone());
    }
    bridge::polars_type(&output.data_type())
}

/// One core call per embedding chunk. The group column is aligned to the chunk by a
/// zero-copy slice. Public for expression plugins, as [`output_field`].
pub fn evaluate(
    output: Output,
    model: &Model,
    cols: &mut [Column],
    route: reclag::Route,
) -> PolarsResult<Column> {
    let name = output.function_name();
    let emb = cols[0].as_materialized_series();
    let emb_name = emb.name().to_string();
    let n = emb.len();
    let groups: Option<(arrow_array::ArrayRef, String)> = match cols.get(1) {
        Some(g) if g.dtype() != &DataType::Null => {
            // A literal group arrives as one value: broadcast it to the frame.
            let g = if g.len() == 1 && n != 1 {
                g.new_from_index(0, n)
            } else {
                g.clone()
            };
            let s = g.as_materialized_series().rechunk();
            let gname = s.name().to_string();
            let arr = match s.n_chunks() {
                0 => None,
                _ => Some(bridge::to_arrow_rs(s.to_arrow(0, CompatLevel::newest()))?),
            };
            arr.map(|a| (a, gname))
        }
        _ => None,
    };
    if let Some((g, gname)) = &groups
        && g.len() != n
    {
        polars_bail!(ShapeMismatch:
            "{name}: group column '{gname}' has {} rows but the embedding column '{emb_name}' has {n}",
            g.len()
        );
    }
    let mut chunks = Vec::with_capacity(emb.n_chunks());
    let mut offset = 0;
    for i in 0..emb.n_chunks() {
        let array = bridge::to_arrow_rs(emb.to_arrow(i, CompatLevel::newest()))?;
        let len = array.len();
        let rows = reclag::arrow::embedding_rows(array.as_ref(), &emb_name, Some(model.dim()))
            .map_err(|e| polars_err!(ComputeError: "{name}: {e}"))?;
        let resolved = match &groups {
            None => None,
            Some((g, gname)) => Some(
                reclag::arrow::resolve_groups(model, g.slice(offset, len).as_ref(), gname)
                    .map_err(|e| polars_err!(ComputeError: "{name}: {e}"))?,
            ),
        };
        let out = output
            .evaluate(model, &rows, resolved.as_deref(), route)
            .map_err(|e| polars_err!(ComputeError: "{name}: {e}"))?;
        chunks.push(bridge::to_polars(&out)?);
        offset += len;
    }
    let series = if chunks.is_empty() {
        Series::new_empty(name.into(), &output_dtype(output)?)
    } else {
        Series::try_from((PlSmallStr::from(name), chunks))?
    };
    Ok(series.into_column())
}
