//! The one `ScalarUDFImpl` behind every reclag SQL function. Functions differ only in
//! which column of the core's [`ScoreOutput`] they return, so each is an [`Output`]
//! with its own documentation (one file per function) over this shared adapter: type
//! checks at planning time, one kernel call per batch at execution time.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow_array::ArrayRef;
use arrow_schema::{DataType, Field, FieldRef};
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDFImpl, Signature,
    TypeSignature, Volatility,
};
use reclag::{Model, Route, Rows, ScoreOutput, Work};

use crate::registry::ModelRegistry;

/// What a function returns for each row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Output {
    Score,
    Energy,
    OodProbability,
    IsOod,
    Attractor,
    Explain,
    /// §11's conformal p-value against the model's calibration scores.
    PValue,
}

impl Output {
    pub(crate) fn data_type(self) -> DataType {
        match self {
            Output::Score | Output::Energy | Output::OodProbability | Output::PValue => {
                DataType::Float64
            }
            Output::IsOod => DataType::Boolean,
            Output::Attractor => DataType::Int32,
            Output::Explain => reclag::arrow::explain_type(),
        }
    }

    /// Only the trajectory outputs pay for the dynamics.
    fn work(self) -> Work {
        match self {
            Output::IsOod | Output::Attractor | Output::Explain => Work::WithDynamics,
            _ => Work::EnergyOnly,
        }
    }

    /// The SQL function that returns this output; Polars expressions use the same name
    /// in their messages and output column.
    pub fn function_name(self) -> &'static str {
        match self {
            Output::Score => "reclag_score",
            Output::Energy => "reclag_energy",
            Output::OodProbability => "reclag_ood_probability",
            Output::IsOod => "reclag_is_ood",
            Output::Attractor => "reclag_attractor",
            Output::Explain => "reclag_explain",
            Output::PValue => "reclag_p_value",
        }
    }

    /// Whether `model` can give this output: a p-value needs calibration scores,
    /// which models from format versions 1 and 2 do not keep.
    pub fn check_model(self, model: &Model) -> reclag::Result<()> {
        if self == Output::PValue {
            model.require_calibration()?;
        }
        Ok(())
    }

    /// The one core call per batch that SQL and Polars share: the same rows and groups
    /// give the same array, nulls included.
    pub fn evaluate(
        self,
        model: &Model,
        rows: &Rows<'_>,
        groups: Option<&[Option<u32>]>,
        route: Route,
    ) -> reclag::Result<ArrayRef> {
        if self == Output::Explain {
            let mut ex = reclag::Explanation::default();
            model.explain_routed(rows, groups, route, &mut ex)?;
            return Ok(reclag::arrow::explain_array(model, ex));
        }
        let mut out = ScoreOutput::default();
        model.score_routed(rows, groups, route, self.work(), &mut out)?;
        if self == Output::PValue {
            let mut p = Vec::new();
            model.p_values_into(&out, groups, route, &mut p)?;
            return Ok(reclag::arrow::p_value_array(p));
        }
        Ok(self.array(out))
    }

    fn array(self, out: ScoreOutput) -> ArrayRef {
        let a = reclag::arrow::output_arrays(out);
        match self {
            Output::Score => a.score,
            Output::Energy => a.energy,
            Output::OodProbability => a.ood_probability,
            Output::IsOod => a.is_ood,
            Output::Attractor | Output::Explain | Output::PValue => a.attractor,
        }
    }
}

/// A reclag SQL function: `name(model, embedding [, group])`.
#[derive(Debug)]
pub struct ReclagFunc {
    name: &'static str,
    output: Output,
    signature: Signature,
    registry: Arc<ModelRegistry>,
    doc: &'static Documentation,
}

impl PartialEq for ReclagFunc {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && Arc::ptr_eq(&self.registry, &other.registry)
    }
}
impl Eq for ReclagFunc {}
impl Hash for ReclagFunc {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

impl ReclagFunc {
    pub fn new(output: Output, registry: Arc<ModelRegistry>, doc: &'static Documentation) -> Self {
        // `Any` comes first so arguments are taken exactly as they are (an `Exact` list
        // signature would coerce a FixedSizeList to List and hide its dimension from
        // the planning checks). The `Exact` entries after it are never chosen for real
        // arguments; they give `SHOW FUNCTIONS` example parameter types to list.
        let list = DataType::new_list(DataType::Float32, true);
        let signature = Signature::one_of(
            vec![
                TypeSignature::Any(2),
                TypeSignature::Any(3),
                TypeSignature::Exact(vec![DataType::Utf8, list.clone()]),
                TypeSignature::Exact(vec![DataType::Utf8, list.clone(), DataType::Int64]),
                TypeSignature::Exact(vec![DataType::Utf8, list, DataType::Utf8]),
            ],
            Volatility::Immutable,
        );
        ReclagFunc {
            name: output.function_name(),
            output,
            signature,
            registry,
            doc,
        }
    }

    /// The registry this function resolves models in (what a plan codec pins).
    pub fn registry(&self) -> &Arc<ModelRegistry> {
        &self.registry
    }

    fn model_from_literal(&self, v: Option<&ScalarValue>) -> Result<(Arc<Model>, Route)> {
        let name = match v {
            Some(
                ScalarValue::Utf8(Some(s))
                | ScalarValue::LargeUtf8(Some(s))
                | ScalarValue::Utf8View(Some(s)),
            ) => s,
            _ => {
                return plan_err!(
                    "{}: the first argument must be a string literal naming a model, e.g. {}('prod', embedding)",
                    self.name,
                    self.name
                );
            }
        };
        let (name, route) = split_route(name);
        match self.registry.resolve(name) {
            Ok(m) => Ok((m, route)),
            Err(e) => plan_err!("{}: {e}", self.name),
        }
    }
}

/// Suffix of a model argument that asks for union mode (§4) for rows without a group:
/// `reclag_score('prod#union', embedding)`. Without it they are routed by best margin.
pub const UNION_SUFFIX: &str = "#union";

/// The model name or URL and the route its argument asks for.
pub fn split_route(arg: &str) -> (&str, Route) {
    match arg.strip_suffix(UNION_SUFFIX) {
        Some(name) => (name, Route::Union),
        None => (arg, Route::Best),
    }
}

impl ScalarUDFImpl for ReclagFunc {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(self.output.data_type())
    }

    /// Planning-time checks: a known model; an embedding column of a list type (a
    /// `FixedSizeList` of the wrong size is rejected here, before any row is read); an
    /// integer or string group. Without a literal model (DataFusion's
    /// information_schema asks this way, and so does a query passing a column) the
    /// model checks wait for execution, where a non-literal model is an error.
    fn return_field_from_args(&self, args: ReturnFieldArgs<'_>) -> Result<FieldRef> {
        let field = Arc::new(Field::new(self.name, self.output.data_type(), true));
        let Some(literal) = args.scalar_arguments.first().copied().flatten() else {
            return Ok(field);
        };
        let (model, _) = self.model_from_literal(Some(literal))?;
        if let Err(e) = self.output.check_model(&model) {
            return plan_err!("{}: {e}", self.name);
        }
        let emb = &args.arg_fields[1];
        if let Err(e) =
            reclag::arrow::check_embedding_type(emb.data_type(), emb.name(), Some(model.dim()))
        {
            return plan_err!("{}: {e}", self.name);
        }
        if let Some(g) = args.arg_fields.get(2) {
            let ok = g.data_type().is_integer()
                || matches!(
                    g.data_type(),
                    DataType::Null | DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
                )
                || matches!(g.data_type(), DataType::Dictionary(_, v) if matches!(**v, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View));
            if !ok {
                return plan_err!(
                    "{}: group argument '{}' has type {}; expected an integer or string type (NULL for best routing)",
                    self.name,
                    g.name(),
                    g.data_type()
                );
            }
        }
        Ok(Arc::new(Field::new(
            self.name,
            self.output.data_type(),
            true,
        )))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let n = args.number_rows;
        let (model, route) = match &args.args[0] {
            ColumnarValue::Scalar(v) => self.model_from_literal(Some(v))?,
            // DataFusion's FFI (the Python `datafusion` package) passes every argument
            // as an array, so a literal arrives repeated; planning already required one.
            ColumnarValue::Array(a) if a.is_empty() => {
                return Ok(ColumnarValue::Array(
                    datafusion::arrow::array::new_empty_array(args.return_field.data_type()),
                ));
            }
            ColumnarValue::Array(a) if broadcast_literal(a.as_ref()).is_some() => {
                let v = broadcast_literal(a.as_ref()).expect("checked");
                self.model_from_literal(Some(&ScalarValue::Utf8(Some(v))))?
            }
            ColumnarValue::Array(_) => {
                return exec_err!(
                    "{}: the first argument must be a string literal naming a model, not a column, e.g. {}('prod', embedding)",
                    self.name,
                    self.name
                );
            }
        };
        let emb_name = args.arg_fields[1].name().clone();
        let emb = args.args[1].to_array(n)?;
        let rows = match reclag::arrow::embedding_rows(emb.as_ref(), &emb_name, Some(model.dim())) {
            Ok(r) => r,
            Err(e) => return exec_err!("{}: {e}", self.name),
        };
        let groups = match args.args.get(2) {
            None => None,
            Some(g) => {
                let g = g.to_array(n)?;
                if g.data_type() == &DataType::Null {
                    None
                } else {
                    let gname = args.arg_fields[2].name().clone();
                    match reclag::arrow::resolve_groups(&model, g.as_ref(), &gname) {
                        Ok(v) => Some(v),
                        Err(e) => return exec_err!("{}: {e}", self.name),
                    }
                }
            }
        };
        match off_reactor(|| {
            self.output
                .evaluate(&model, &rows, groups.as_deref(), route)
        }) {
            Ok(a) => Ok(ColumnarValue::Array(a)),
            Err(e) => exec_err!("{}: {e}", self.name),
        }
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(self.doc)
    }
}

/// DataFusion evaluates functions on its tokio workers, and the kernel fans a batch
/// out on rayon while the calling worker waits. `block_in_place` hands that worker's
/// queued tasks (IO, other partitions) to another worker for the duration, so CPU
/// work never stalls the reactor.
fn off_reactor<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Builds a function's documentation once; the arguments are common to all of them.
pub fn doc(description: &str, example: &str) -> Documentation {
    Documentation::builder(
        datafusion::logical_expr::DocSection {
            include: true,
            label: "reclag Functions",
            description: Some("Out-of-distribution detection with RecLag"),
        },
        description,
        example,
    )
    .with_argument(
        "model",
        "String literal: a model registered on the session, or a model file path or URL. A `#union` suffix ('prod#union') scores rows without a group against the union of all groups with the union threshold (spec §4) instead of routing them to the group of largest margin.",
    )
    .with_argument(
        "embedding",
        "FixedSizeList, List or LargeList of Float32/Float64 with the model's dimension.",
    )
    .with_argument(
        "group",
        "Optional integer or string group (class label). NULL or omitted: the group of largest margin A_g − τ_g (best routing), or the union with a '#union' model suffix.",
    )
    .build()
}

/// The one value of a string array that repeats it in every row (no nulls): a literal
/// as DataFusion's FFI delivers it.
fn broadcast_literal(a: &dyn datafusion::arrow::array::Array) -> Option<String> {
    use datafusion::arrow::array::Array;
    let utf8 = datafusion::arrow::compute::cast(a, &DataType::Utf8).ok()?;
    let s = utf8
        .as_any()
        .downcast_ref::<datafusion::arrow::array::StringArray>()?;
    if s.null_count() > 0 || s.is_empty() {
        return None;
    }
    let first = s.value(0);
    s.iter()
        .all(|v| v == Some(first))
        .then(|| first.to_string())
}
