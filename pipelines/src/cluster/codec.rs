//! The plan codec every cluster process uses: reclag functions with their model pins
//! ([`ReclagCodec`]), shipped tables and fast scans, and Ballista's own nodes (shuffle
//! readers and writers) underneath. The client, the scheduler and each executor must
//! all use this one, or a plan encoded by one cannot be decoded by another.

use std::sync::Arc;

use ballista_core::serde::{BallistaLogicalExtensionCodec, BallistaPhysicalExtensionCodec};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::TableProvider;
use datafusion::common::{Result, TableReference};
use datafusion::datasource::file_format::FileFormatFactory;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Extension, LogicalPlan, ScalarUDF};
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::logical_plan::LogicalExtensionCodec;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use reclag_udfs::{ModelRegistry, ReclagCodec};

use super::{scan, score};
use crate::store::Stores;

/// The codec for `stores`: decoded tables, scans and pinned models are read through
/// them (the process's object-store credentials). An executor (`executor`) shares a
/// model among the tasks of a query; the client and the scheduler load every pinned
/// model as they decode, so a model file replaced after planning fails the query
/// there, with the model, its URL and both checksums.
pub fn cluster_codec(stores: Arc<Stores>, executor: bool) -> Arc<ReclagCodec> {
    let registry = crate::ops::sql::model_registry(stores.clone());
    let codec = ReclagCodec::new(registry.clone());
    let codec = if executor {
        codec.sharing_models()
    } else {
        codec
    };
    Arc::new(
        codec
            .with_logical(Arc::new(TablesCodec {
                inner: BallistaLogicalExtensionCodec::default(),
                stores: stores.clone(),
            }))
            .with_physical(Arc::new(ScansCodec {
                inner: BallistaPhysicalExtensionCodec::default(),
                stores,
                registry,
                share: executor,
            })),
    )
}

/// Shipped tables, then Ballista's logical codec.
#[derive(Debug)]
struct TablesCodec {
    inner: BallistaLogicalExtensionCodec,
    stores: Arc<Stores>,
}

impl LogicalExtensionCodec for TablesCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[LogicalPlan],
        ctx: &TaskContext,
    ) -> Result<Extension> {
        self.inner.try_decode(buf, inputs, ctx)
    }

    fn try_encode(&self, node: &Extension, buf: &mut Vec<u8>) -> Result<()> {
        self.inner.try_encode(node, buf)
    }

    fn try_decode_table_provider(
        &self,
        buf: &[u8],
        table_ref: &TableReference,
        schema: SchemaRef,
        ctx: &TaskContext,
    ) -> Result<Arc<dyn TableProvider>> {
        match scan::decode_table(buf, &self.stores) {
            Some(t) => t,
            None => self
                .inner
                .try_decode_table_provider(buf, table_ref, schema, ctx),
        }
    }

    fn try_encode_table_provider(
        &self,
        table_ref: &TableReference,
        node: Arc<dyn TableProvider>,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        match scan::encode_table(node.as_ref(), buf) {
            Some(r) => r,
            None => self.inner.try_encode_table_provider(table_ref, node, buf),
        }
    }

    fn try_decode_file_format(
        &self,
        buf: &[u8],
        ctx: &TaskContext,
    ) -> Result<Arc<dyn FileFormatFactory>> {
        self.inner.try_decode_file_format(buf, ctx)
    }

    fn try_encode_file_format(
        &self,
        buf: &mut Vec<u8>,
        node: Arc<dyn FileFormatFactory>,
    ) -> Result<()> {
        self.inner.try_encode_file_format(buf, node)
    }

    fn try_decode_udf(&self, name: &str, buf: &[u8]) -> Result<Arc<ScalarUDF>> {
        self.inner.try_decode_udf(name, buf)
    }

    fn try_encode_udf(&self, node: &ScalarUDF, buf: &mut Vec<u8>) -> Result<()> {
        self.inner.try_encode_udf(node, buf)
    }
}

/// Fast scans and score writers, then Ballista's physical codec. Ballista's decoder
/// takes any bytes for its own, so ours are recognised by their tag first.
#[derive(Debug)]
struct ScansCodec {
    inner: BallistaPhysicalExtensionCodec,
    stores: Arc<Stores>,
    /// Score writers load their pinned model here (see [`ModelRegistry::scoped`]).
    registry: Arc<ModelRegistry>,
    share: bool,
}

impl PhysicalExtensionCodec for ScansCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if let Some(w) = score::decode(buf, inputs, &self.registry, self.share, &self.stores) {
            return w;
        }
        match scan::decode_scan(buf, &self.stores) {
            Some(s) => s,
            None => self.inner.try_decode(buf, inputs, ctx, proto_converter),
        }
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        if let Some(r) = score::encode(&node, buf) {
            return r;
        }
        match scan::encode_scan(&node, buf) {
            Some(r) => r,
            None => self.inner.try_encode(node, buf, proto_converter),
        }
    }

    fn try_decode_udf(&self, name: &str, buf: &[u8]) -> Result<Arc<ScalarUDF>> {
        self.inner.try_decode_udf(name, buf)
    }

    fn try_encode_udf(&self, node: &ScalarUDF, buf: &mut Vec<u8>) -> Result<()> {
        self.inner.try_encode_udf(node, buf)
    }
}
