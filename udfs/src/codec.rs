//! Plan serialization for queries that use the reclag functions, so a plan built on
//! one machine can run on another (a Ballista executor, a worker pool).
//!
//! A reclag function resolves its model by the string literal in the query. That
//! literal means nothing to another process, and a model file can change between
//! planning and execution. So each function is encoded with the models its session
//! resolved while planning, each as a [`ModelPin`]: the key the query uses, the
//! absolute URL it was loaded from, and its checksum. Decoding loads every pinned URL
//! into the decoding session's registry and refuses a model whose checksum differs,
//! before any row is read.
//!
//! ```ignore
//! let codec = ReclagCodec::new(registry);
//! let bytes = logical_plan_to_bytes_with_extension_codec(&plan, &codec)?;
//! // elsewhere, with a registry that can reach the model URLs:
//! let plan = logical_plan_from_bytes_with_extension_codec(&bytes, &ctx.task_ctx(), &codec)?;
//! ```

use std::any::Any;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::TableProvider;
use datafusion::common::{Result, TableReference, exec_err, plan_datafusion_err};
use datafusion::datasource::file_format::FileFormatFactory;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Extension, LogicalPlan, ScalarUDF};
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::logical_plan::{DefaultLogicalExtensionCodec, LogicalExtensionCodec};
use datafusion_proto::physical_plan::{
    DefaultPhysicalExtensionCodec, PhysicalExtensionCodec, PhysicalProtoConverterExtension,
};
use serde_json::{Value, json};

use crate::function::ReclagFunc;
use crate::registry::{ModelPin, ModelRegistry};

/// Payload format version; a decoder refuses versions it does not know rather than
/// guessing at fields.
const VERSION: u64 = 1;

/// A `datafusion-proto` codec for plans that use the reclag functions. It encodes
/// reclag functions itself and hands everything else (extension nodes, table
/// providers, file formats) to inner codecs, so it composes with a codec a runtime
/// such as Ballista already has.
#[derive(Debug, Clone)]
pub struct ReclagCodec {
    registry: Arc<ModelRegistry>,
    logical: Arc<dyn LogicalExtensionCodec>,
    physical: Arc<dyn PhysicalExtensionCodec>,
    /// Whether decoded plans share models other decoded plans hold at the pinned
    /// checksum (see [`ModelRegistry::scoped`]).
    share: bool,
}

impl ReclagCodec {
    /// Decoded functions resolve models in `registry`, which must be able to load the
    /// pinned URLs (give it the loader the executing process uses for object stores).
    pub fn new(registry: Arc<ModelRegistry>) -> Self {
        ReclagCodec {
            registry,
            logical: Arc::new(DefaultLogicalExtensionCodec {}),
            physical: Arc::new(DefaultPhysicalExtensionCodec {}),
            share: false,
        }
    }

    /// Decoded plans take a pinned model from another decoded plan that holds it at
    /// the same checksum instead of loading it again: for a process that decodes one
    /// query many times (a cluster executor, once per task) behind one that checks
    /// each query as it arrives (the scheduler).
    pub fn sharing_models(mut self) -> Self {
        self.share = true;
        self
    }

    /// Delegates logical extension nodes, tables and file formats to `inner`.
    pub fn with_logical(mut self, inner: Arc<dyn LogicalExtensionCodec>) -> Self {
        self.logical = inner;
        self
    }

    /// Delegates physical extension nodes to `inner`.
    pub fn with_physical(mut self, inner: Arc<dyn PhysicalExtensionCodec>) -> Self {
        self.physical = inner;
        self
    }

    /// The registry decoded functions resolve models in.
    pub fn registry(&self) -> &Arc<ModelRegistry> {
        &self.registry
    }

    /// Writes the pins of a reclag function's registry; other functions get no payload,
    /// so DataFusion looks them up by name when decoding, as it would without us.
    fn encode_udf(&self, node: &ScalarUDF, buf: &mut Vec<u8>) -> Result<()> {
        let inner: &dyn Any = node.inner().as_ref();
        let Some(f) = inner.downcast_ref::<ReclagFunc>() else {
            return Ok(());
        };
        let models: Vec<Value> = f
            .registry()
            .pins()
            .into_iter()
            .map(|p| json!({"key": p.key, "url": p.url, "sha256": p.sha256}))
            .collect();
        let payload = json!({"reclag": VERSION, "models": models});
        serde_json::to_writer(buf, &payload)
            .map_err(|e| plan_datafusion_err!("{}: encoding the model pins: {e}", node.name()))
    }

    /// A reclag function resolving models in a registry of its own: the pinned
    /// models at their checksums (see [`ModelRegistry::scoped`]).
    fn decode_udf(&self, name: &str, buf: &[u8]) -> Result<Arc<ScalarUDF>> {
        let not_ours = || {
            exec_err!(
                "serialized plan: function '{name}' carries a payload but is not a reclag function; decode this plan with the codec that encoded it"
            )
        };
        if !crate::functions(self.registry.clone())
            .iter()
            .any(|u| u.name() == name)
        {
            return not_ours();
        }
        let registry = match self.registry.scoped(&parse_pins(name, buf)?, self.share) {
            Ok(r) => r,
            Err(e) => return exec_err!("{name}: {e}"),
        };
        match crate::functions(registry)
            .into_iter()
            .find(|u| u.name() == name)
        {
            Some(udf) => Ok(Arc::new(udf)),
            None => not_ours(),
        }
    }
}

/// Reads a payload written by [`ReclagCodec::encode_udf`], naming the function and
/// the field that is wrong.
fn parse_pins(name: &str, buf: &[u8]) -> Result<Vec<ModelPin>> {
    let bad = |what: String| plan_datafusion_err!("serialized plan: {name}: {what}");
    let v: Value = serde_json::from_slice(buf)
        .map_err(|e| bad(format!("the model payload is not reclag's JSON ({e})")))?;
    match v.get("reclag").and_then(Value::as_u64) {
        Some(VERSION) => {}
        other => {
            return Err(bad(format!(
                "payload version {other:?}, expected {VERSION}; decode with the reclag version that encoded the plan"
            )));
        }
    }
    let models = v
        .get("models")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("payload has no 'models' array".into()))?;
    models
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let field = |k: &str| m.get(k).and_then(Value::as_str).map(str::to_string);
            let key = field("key").ok_or_else(|| bad(format!("models[{i}].key is missing")))?;
            let sha256 =
                field("sha256").ok_or_else(|| bad(format!("models[{i}].sha256 is missing")))?;
            if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad(format!(
                    "models[{i}].sha256 is '{sha256}', expected 64 hex digits"
                )));
            }
            Ok(ModelPin {
                key,
                url: field("url"),
                sha256,
            })
        })
        .collect()
}

impl LogicalExtensionCodec for ReclagCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[LogicalPlan],
        ctx: &TaskContext,
    ) -> Result<Extension> {
        self.logical.try_decode(buf, inputs, ctx)
    }

    fn try_encode(&self, node: &Extension, buf: &mut Vec<u8>) -> Result<()> {
        self.logical.try_encode(node, buf)
    }

    fn try_decode_table_provider(
        &self,
        buf: &[u8],
        table_ref: &TableReference,
        schema: SchemaRef,
        ctx: &TaskContext,
    ) -> Result<Arc<dyn TableProvider>> {
        self.logical
            .try_decode_table_provider(buf, table_ref, schema, ctx)
    }

    fn try_encode_table_provider(
        &self,
        table_ref: &TableReference,
        node: Arc<dyn TableProvider>,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        self.logical.try_encode_table_provider(table_ref, node, buf)
    }

    fn try_decode_file_format(
        &self,
        buf: &[u8],
        ctx: &TaskContext,
    ) -> Result<Arc<dyn FileFormatFactory>> {
        self.logical.try_decode_file_format(buf, ctx)
    }

    fn try_encode_file_format(
        &self,
        buf: &mut Vec<u8>,
        node: Arc<dyn FileFormatFactory>,
    ) -> Result<()> {
        self.logical.try_encode_file_format(buf, node)
    }

    fn try_decode_udf(&self, name: &str, buf: &[u8]) -> Result<Arc<ScalarUDF>> {
        if buf.is_empty() {
            return self.logical.try_decode_udf(name, buf);
        }
        self.decode_udf(name, buf)
    }

    fn try_encode_udf(&self, node: &ScalarUDF, buf: &mut Vec<u8>) -> Result<()> {
        self.encode_udf(node, buf)?;
        if buf.is_empty() {
            self.logical.try_encode_udf(node, buf)?;
        }
        Ok(())
    }
}

impl PhysicalExtensionCodec for ReclagCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.physical.try_decode(buf, inputs, ctx, proto_converter)
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        self.physical.try_encode(node, buf, proto_converter)
    }

    fn try_decode_udf(&self, name: &str, buf: &[u8]) -> Result<Arc<ScalarUDF>> {
        if buf.is_empty() {
            return self.physical.try_decode_udf(name, buf);
        }
        self.decode_udf(name, buf)
    }

    fn try_encode_udf(&self, node: &ScalarUDF, buf: &mut Vec<u8>) -> Result<()> {
        self.encode_udf(node, buf)?;
        if buf.is_empty() {
            self.physical.try_encode_udf(node, buf)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::execution::FunctionRegistry;
    use reclag::Model;

    use super::*;
    use crate::test_util::*;

    /// The test model with another τ: same shape, different checksum.
    fn other_model() -> Model {
        model_tau(TAU + 0.1)
    }

    /// Encodes `reclag_score` after a query has resolved `m` on the test session.
    async fn encoded() -> Vec<u8> {
        let (ctx, _) = test_ctx();
        f64_col(&ctx, "SELECT reclag_score('m', e) FROM t", 0).await;
        let udf = ctx.udf("reclag_score").unwrap();
        let codec = ReclagCodec::new(ModelRegistry::new());
        let mut buf = Vec::new();
        LogicalExtensionCodec::try_encode_udf(&codec, &udf, &mut buf).unwrap();
        buf
    }

    #[tokio::test]
    async fn in_memory_models_travel_as_checksums_and_must_match_where_decoded() {
        let buf = encoded().await;
        let v: Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["models"][0]["key"], "m");
        assert_eq!(v["models"][0]["url"], Value::Null, "registered from memory");
        let sha = reclag::format::checksum(&model());
        assert_eq!(v["models"][0]["sha256"], sha.as_str());

        // Decoding where the name is unknown succeeds, but resolving it explains why
        // the plan could not carry the model.
        let empty = ModelRegistry::new();
        let codec = ReclagCodec::new(empty.clone());
        let udf = LogicalExtensionCodec::try_decode_udf(&codec, "reclag_score", &buf).unwrap();
        assert_eq!(udf.name(), "reclag_score");
        let inner: &dyn Any = udf.inner().as_ref();
        let decoded = inner.downcast_ref::<ReclagFunc>().unwrap().registry();
        let e = decoded.resolve("m").unwrap_err();
        assert!(
            e.contains("registered from memory") && e.contains(&sha),
            "{e}"
        );

        // The same model registered under the name: accepted.
        let same = ModelRegistry::new();
        same.register("m", Arc::new(model()));
        let codec = ReclagCodec::new(same);
        PhysicalExtensionCodec::try_decode_udf(&codec, "reclag_score", &buf).unwrap();

        // A different model under the name: refused, naming both checksums.
        let other = ModelRegistry::new();
        other.register("m", Arc::new(other_model()));
        let codec = ReclagCodec::new(other);
        let e = PhysicalExtensionCodec::try_decode_udf(&codec, "reclag_score", &buf)
            .unwrap_err()
            .to_string();
        let other_sha = reclag::format::checksum(&other_model());
        assert_ne!(sha, other_sha);
        assert!(
            e.contains("model 'm' on this session has checksum")
                && e.contains(&sha)
                && e.contains(&other_sha),
            "{e}"
        );
    }

    #[tokio::test]
    async fn other_functions_are_left_to_datafusion() {
        let (ctx, _) = test_ctx();
        let codec = ReclagCodec::new(ModelRegistry::new());
        let mut buf = Vec::new();
        LogicalExtensionCodec::try_encode_udf(&codec, &ctx.udf("abs").unwrap(), &mut buf).unwrap();
        assert!(
            buf.is_empty(),
            "no payload: decoded by name from the registry"
        );
        let e = LogicalExtensionCodec::try_decode_udf(&codec, "abs", b"{}")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("'abs' carries a payload but is not a reclag function"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn corrupt_payloads_name_the_field() {
        let codec = ReclagCodec::new(ModelRegistry::new());
        let good = encoded().await;
        let mut v: Value = serde_json::from_slice(&good).unwrap();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"not json".to_vec(), "not reclag's JSON"),
            (
                br#"{"reclag": 99, "models": []}"#.to_vec(),
                "payload version Some(99), expected 1",
            ),
            (br#"{"reclag": 1}"#.to_vec(), "no 'models' array"),
            (
                br#"{"reclag": 1, "models": [{"sha256": "00"}]}"#.to_vec(),
                "models[0].key is missing",
            ),
            (
                {
                    v["models"][0]["sha256"] = Value::from("xyz");
                    serde_json::to_vec(&v).unwrap()
                },
                "models[0].sha256 is 'xyz', expected 64 hex digits",
            ),
        ];
        for (buf, want) in cases {
            let e = LogicalExtensionCodec::try_decode_udf(&codec, "reclag_is_ood", &buf)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("reclag_is_ood") && e.contains(want),
                "{want}: {e}"
            );
        }
    }
}
