//! The one `ScalarUDFImpl` behind every reclag SQL function. Functions differ only in
//! which column of the core's [`ScoreOutput`] they return, so each is an [`Output`]
//! with its own documentation (one file per function) over this shared adapter: type
//! checks at planning time, one kernel call per batch at execution time.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::{Arc, RwLock};

use arrow_array::ArrayRef;
use arrow_schema::{DataType, Field, FieldRef};
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDFImpl, Signature,
    TypeSignature, Volatility,
};
use reclag::{Model, ScoreOutput, Work};

/// Loads a model from a path or URL. The pipelines crate installs one that reaches
/// object stores; the default reads local files.
pub type ModelLoader = dyn Fn(&str) -> std::result::Result<Model, String> + Send + Sync;

/// Models visible to SQL: registered names, plus models given by path or URL, loaded
/// on first use and cached for the life of the session under the URL, with the
/// checksum they were loaded with (what a serialized plan pins).
#[derive(Default)]
pub struct ModelRegistry {
    named: RwLock<HashMap<String, Arc<Model>>>,
    loaded: RwLock<HashMap<String, Arc<Model>>>,
    loader: Option<Box<ModelLoader>>,
}

impl std::fmt::Debug for ModelRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelRegistry")
            .field("models", &self.models())
            .finish()
    }
}

impl ModelRegistry {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A registry that loads path and URL model arguments with `loader`.
    pub fn with_loader(loader: Box<ModelLoader>) -> Arc<Self> {
        Arc::new(ModelRegistry {
            loader: Some(loader),
            ..Default::default()
        })
    }

    /// Makes `model` available as `name` in SQL (`reclag_score('name', ...)`).
    pub fn register(&self, name: impl Into<String>, model: Arc<Model>) {
        self.named
            .write()
            .expect("registry lock")
            .insert(name.into(), model);
    }

    /// `(name or URL, checksum)` of every model known so far, sorted.
    pub fn models(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = [&self.named, &self.loaded]
            .iter()
            .flat_map(|m| {
                m.read()
                    .expect("registry lock")
                    .iter()
                    .map(|(k, m)| (k.clone(), reclag::format::checksum(m)))
                    .collect::<Vec<_>>()
            })
            .collect();
        v.sort();
        v
    }

    /// A registered name, else a model file path or URL (loaded once, then cached).
    pub fn resolve(&self, name: &str) -> std::result::Result<Arc<Model>, String> {
        if let Some(m) = self.named.read().expect("registry lock").get(name) {
            return Ok(m.clone());
        }
        if let Some(m) = self.loaded.read().expect("registry lock").get(name) {
            return Ok(m.clone());
        }
        let looks_like_path =
            name.contains('/') || name.ends_with(".parquet") || name.contains("://");
        if !looks_like_path {
            let mut known: Vec<String> = self
                .named
                .read()
                .expect("registry lock")
                .keys()
                .cloned()
                .collect();
            known.sort();
            return Err(format!(
                "model '{name}' is not registered (registered: {}); register it or pass a model file path or URL",
                if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                }
            ));
        }
        let model = match &self.loader {
            Some(load) => load(name)?,
            None => reclag::format::load(Path::new(name)).map_err(|e| e.to_string())?,
        };
        let m = Arc::new(model);
        self.loaded
            .write()
            .expect("registry lock")
            .insert(name.to_string(), m.clone());
        Ok(m)
    }
}

/// What a function returns for each row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Output {
    Score,
    Energy,
    OodProbability,
    IsOod,
    Attractor,
    Explain,
}

impl Output {
    fn data_type(self) -> DataType {
        match self {
            Output::Score | Output::Energy | Output::OodProbability => DataType::Float64,
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

    fn array(self, out: ScoreOutput) -> ArrayRef {
        let a = reclag::arrow::output_arrays(out);
        match self {
            Output::Score => a.score,
            Output::Energy => a.energy,
            Output::OodProbability => a.ood_probability,
            Output::IsOod => a.is_ood,
            Output::Attractor | Output::Explain => a.attractor,
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
    pub fn new(
        name: &'static str,
        output: Output,
        registry: Arc<ModelRegistry>,
        doc: &'static Documentation,
    ) -> Self {
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
            name,
            output,
            signature,
            registry,
            doc,
        }
    }

    fn model_from_literal(&self, v: Option<&ScalarValue>) -> Result<Arc<Model>> {
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
        match self.registry.resolve(name) {
            Ok(m) => Ok(m),
            Err(e) => plan_err!("{}: {e}", self.name),
        }
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
        let model = self.model_from_literal(Some(literal))?;
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
                    "{}: group argument '{}' has type {}; expected an integer or string type (NULL for union mode)",
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
        let model = match &args.args[0] {
            ColumnarValue::Scalar(v) => self.model_from_literal(Some(v))?,
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
        if self.output == Output::Explain {
            let mut ex = reclag::Explanation::default();
            if let Err(e) = off_reactor(|| model.explain_into(&rows, groups.as_deref(), &mut ex)) {
                return exec_err!("{}: {e}", self.name);
            }
            return Ok(ColumnarValue::Array(reclag::arrow::explain_array(
                &model, ex,
            )));
        }
        let mut out = ScoreOutput::default();
        let work = self.output.work();
        if let Err(e) = off_reactor(|| model.score_into(&rows, groups.as_deref(), work, &mut out)) {
            return exec_err!("{}: {e}", self.name);
        }
        Ok(ColumnarValue::Array(self.output.array(out)))
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
        "String literal: a model registered on the session, or a model file path.",
    )
    .with_argument(
        "embedding",
        "FixedSizeList, List or LargeList of Float32/Float64 with the model's dimension.",
    )
    .with_argument(
        "group",
        "Optional integer or string group (class label). NULL or omitted: the union of all groups.",
    )
    .build()
}
