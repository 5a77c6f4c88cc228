//! The Polars expression plugin: `reclag.polars.score(...)` and friends register these
//! entry points with Polars, which loads this library and calls them per chunk. The
//! model crosses as its checksum and file (kwargs), never pickled whole: the entry
//! point finds the model this process holds, or loads the file and refuses one whose
//! checksum changed.

use polars::prelude::*;
use pyo3_polars::derive::polars_expr;
use reclag::Route;
use reclag_udfs::Output;
use serde::Deserialize;

use crate::model::model_by_key;

#[derive(Deserialize)]
struct ModelKwargs {
    sha256: String,
    path: Option<String>,
    /// "best" or "union": where rows without a group go.
    route: String,
}

fn call(output: Output, inputs: &[Series], k: &ModelKwargs) -> PolarsResult<Series> {
    let name = output.function_name();
    let model = model_by_key(&k.sha256, k.path.as_deref())
        .map_err(|e| polars_err!(ComputeError: "{name}: {e}"))?;
    let route = route(&k.route)?;
    let mut cols: Vec<Column> = inputs.iter().cloned().map(Column::from).collect();
    Ok(reclag_udfs::polars::evaluate(output, &model, &mut cols, route)?.take_materialized_series())
}

fn field(output: Output, fields: &[Field], k: &ModelKwargs) -> PolarsResult<Field> {
    let name = output.function_name();
    let model = model_by_key(&k.sha256, k.path.as_deref())
        .map_err(|e| polars_err!(ComputeError: "{name}: {e}"))?;
    reclag_udfs::polars::output_field(output, &model, fields)
}

fn route(r: &str) -> PolarsResult<Route> {
    match r {
        "best" => Ok(Route::Best),
        "union" => Ok(Route::Union),
        other => polars_bail!(InvalidOperation: "route '{other}': expected 'best' or 'union'"),
    }
}

macro_rules! entry_points {
    ($($f:ident, $field:ident => $output:expr;)*) => {$(
        fn $field(fields: &[Field], kwargs: ModelKwargs) -> PolarsResult<Field> {
            field($output, fields, &kwargs)
        }

        #[polars_expr(output_type_func_with_kwargs = $field)]
        fn $f(inputs: &[Series], kwargs: ModelKwargs) -> PolarsResult<Series> {
            call($output, inputs, &kwargs)
        }
    )*};
}

entry_points! {
    reclag_score, reclag_score_field => Output::Score;
    reclag_energy, reclag_energy_field => Output::Energy;
    reclag_ood_probability, reclag_ood_probability_field => Output::OodProbability;
    reclag_is_ood, reclag_is_ood_field => Output::IsOod;
    reclag_attractor, reclag_attractor_field => Output::Attractor;
    reclag_p_value, reclag_p_value_field => Output::PValue;
    reclag_explain, reclag_explain_field => Output::Explain;
}
