//! reclag SQL on an Apache DataFusion Ballista cluster.
//!
//! What runs where:
//! - the client (`reclag sql --cluster df://HOST:PORT`) lists every table's files,
//!   reads their footers, resolves the models, plans the query and sends the logical
//!   plan, with each table as its exact file list and each model pinned by URL and
//!   checksum;
//! - the scheduler (`reclag cluster scheduler`) decodes it, prunes hive partitions,
//!   splits the files into row-group ranges (one partition per range set) and hands
//!   stages to executors;
//! - each executor (`reclag cluster executor`) decodes its stage, loads the pinned
//!   models (refusing one whose checksum changed), reads its row groups with the fast
//!   list reader and runs the reclag kernels; results come back to the client over
//!   Arrow Flight.
//!
//! Every process reaches object stores with the same environment variables as every
//! other reclag command. Ballista has no authentication of its own: the processes
//! bind to loopback unless told otherwise.

pub mod codec;
pub mod process;
pub mod scan;
pub mod score;

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use ballista::prelude::{SessionConfigExt, SessionContextExt};
use datafusion::catalog::TableProvider;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::context::SessionContext;
use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry};
use datafusion::prelude::SessionConfig;
use object_store::ObjectStore;
use url::Url;

use crate::error::{Error, Result};
use crate::store::{Location, Stores};
pub use codec::cluster_codec;
use scan::{ShippedFile, ShippedTable};

/// An object-store registry that builds stores from reclag's configuration on first
/// use, so a process reads any `s3://`, `gs://` or `az://` URL a plan names with the
/// environment's credentials, as every reclag command does.
#[derive(Debug)]
pub struct StoresRegistry {
    stores: Arc<Stores>,
    registered: DefaultObjectStoreRegistry,
}

impl StoresRegistry {
    pub fn new(stores: Arc<Stores>) -> Self {
        StoresRegistry {
            stores,
            registered: DefaultObjectStoreRegistry::new(),
        }
    }
}

impl ObjectStoreRegistry for StoresRegistry {
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        self.registered.register_store(url, store)
    }

    fn get_store(&self, url: &Url) -> datafusion::error::Result<Arc<dyn ObjectStore>> {
        if url.scheme() == "file" {
            return self.registered.get_store(url);
        }
        self.registered.get_store(url).or_else(|_| {
            self.stores
                .locate(url.as_str())
                .map(|l| l.store)
                .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))
        })
    }
}

/// Ballista's log (executors registering, tasks received and finished, executors
/// lost) on standard error, where a service manager collects it: Ballista's own lines
/// from `info`, everything else from `warn`.
struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Warn
            || (m.level() <= log::Level::Info && m.target().starts_with("ballista"))
    }

    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            eprintln!(
                "{} {} {}: {}",
                humantime::format_rfc3339_millis(std::time::SystemTime::now()),
                r.level(),
                r.target(),
                r.args()
            );
        }
    }

    fn flush(&self) {}
}

/// Installs the log of a cluster process (once per process; later calls do nothing).
pub fn install_log() {
    if log::set_logger(&StderrLog).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
}

/// The scheduler address of `df://HOST:PORT` (the port defaults to 50050, Ballista's).
pub fn scheduler_address(url: &str) -> Result<(String, u16)> {
    let bad = |why: &str| {
        Error::Usage(format!(
            "--cluster {url}: {why}; expected df://HOST:PORT, the address `reclag cluster scheduler --bind` printed"
        ))
    };
    let rest = url
        .strip_prefix("df://")
        .ok_or_else(|| bad("not a df:// URL"))?
        .trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .map_err(|_| bad("the port is not a number"))?,
        ),
        None => (rest, 50050),
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    Ok((host.to_string(), port))
}

/// Fails within seconds, naming the address and what to do, when nothing listens at
/// the scheduler's address (Ballista's client would retry for a minute).
pub fn check_reachable(url: &str) -> Result<()> {
    let (host, port) = scheduler_address(url)?;
    let addrs: Vec<SocketAddr> = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| {
            Error::Usage(format!(
                "--cluster {url}: cannot resolve {host}: {e}; check the scheduler's host name"
            ))
        })?
        .collect();
    let mut last = None;
    for a in &addrs {
        match TcpStream::connect_timeout(a, Duration::from_secs(3)) {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    Err(Error::Usage(format!(
        "--cluster {url}: no Ballista scheduler answers at {host}:{port} ({}); start one with `reclag cluster scheduler --bind {host}:{port}` and at least one `reclag cluster executor --scheduler {host}:{port}`",
        last.map_or_else(|| "no address".to_string(), |e| e.to_string())
    )))
}

/// A session whose queries run on the cluster at `url`: the reclag functions on the
/// client for planning, the cluster codec on both sides of the wire.
pub async fn client_session(
    url: &str,
    stores: Arc<Stores>,
    registry: Arc<reclag_udfs::ModelRegistry>,
) -> Result<SessionContext> {
    let probe = url.to_string();
    tokio::task::spawn_blocking(move || check_reachable(&probe))
        .await
        .map_err(|e| Error::Usage(format!("--cluster {url}: {e}")))??;
    let codec = cluster_codec(stores, false);
    let config = SessionConfig::new_with_ballista()
        .with_information_schema(true)
        .with_ballista_logical_extension_codec(codec.clone())
        .with_ballista_physical_extension_codec(codec);
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_default_features()
        .build();
    let ctx = SessionContext::remote_with_state(url, state)
        .await
        .map_err(|e| Error::Usage(format!("--cluster {url}: {e}")))?;
    // Ballista's client replaces the session's functions; ours go on afterwards.
    reclag_udfs::register_all(&ctx, registry);
    Ok(ctx)
}

/// Registers table `name` (a file, prefix, glob or hive lake at `loc`) on the cluster
/// session `ctx` as its exact file list, so executors read those files with the fast
/// reader. Tables whose files differ in columns keep DataFusion's listing table (and
/// its scan); a glob among those is refused, as the shipped listing table would lose
/// its pattern and read the whole prefix.
pub async fn register_shipped(
    ctx: &SessionContext,
    name: &str,
    spec: &str,
    loc: &Location,
    stores: &Arc<Stores>,
) -> Result<()> {
    let in_table = |e: &dyn std::fmt::Display| Error::Usage(format!("table '{name}': {e}"));
    // The listing table infers the schema and partition columns, on a local session.
    let local = SessionContext::new();
    crate::ops::sql::register_table(&local, name, loc).await?;
    let table = local.table_provider(name).await.map_err(|e| in_table(&e))?;
    let Ok(listing) = (table.clone() as Arc<dyn std::any::Any + Send + Sync>)
        .downcast::<datafusion::datasource::listing::ListingTable>()
    else {
        return Err(in_table(&"not a listing table"));
    };
    let footers = crate::ops::sql::table::footers(stores, &[spec.to_string()]).await?;
    let groups: std::collections::HashMap<String, Vec<u64>> = footers
        .iter()
        .map(|f| (f.loc.key.to_string(), f.row_groups.clone()))
        .collect();
    let schema = listing.schema();
    let fast = crate::ops::sql::table::FastListTable::new(
        listing,
        footers.into_iter().map(|f| (f.loc, f.schema)).collect(),
    );
    // `RECLAG_FAST_DECODE=0` (for comparison) ships DataFusion's listing table, as
    // it keeps DataFusion's scan in local mode.
    let listed = if fast.fast() && crate::io::read_settings().fast_decode {
        fast.files(&local.state()).await.map_err(|e| in_table(&e))?
    } else {
        None
    };
    let Some(listed) = listed else {
        if loc.key.as_ref().contains(['*', '?', '[']) {
            return Err(Error::Usage(format!(
                "table '{name}': {}: its files differ in columns (or it has no embedding column), so a cluster would scan it with DataFusion's listing table, which ships without its glob and would read every file under the prefix; name a directory or list files whose columns agree",
                loc.display
            )));
        }
        let table = local.table_provider(name).await.map_err(|e| in_table(&e))?;
        ctx.register_table(name, table).map_err(|e| in_table(&e))?;
        return Ok(());
    };
    // Partition columns as plain values: DataFusion types them as dictionaries,
    // which Ballista's shuffle files give back as plain strings, and a later stage
    // then refuses the batches.
    let plain = |t: &datafusion::arrow::datatypes::DataType| match t {
        datafusion::arrow::datatypes::DataType::Dictionary(_, v) => v.as_ref().clone(),
        other => other.clone(),
    };
    let fields: Vec<_> = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            if i < fast.file_columns() {
                f.as_ref().clone()
            } else {
                f.as_ref().clone().with_data_type(plain(f.data_type()))
            }
        })
        .collect();
    let schema = Arc::new(datafusion::arrow::datatypes::Schema::new_with_metadata(
        fields,
        schema.metadata().clone(),
    ));
    let files = listed
        .into_iter()
        .map(|(loc, partition)| ShippedFile {
            row_groups: groups.get(loc.key.as_ref()).cloned().unwrap_or_default(),
            loc,
            partition: partition
                .into_iter()
                .map(|v| match v {
                    datafusion::common::ScalarValue::Dictionary(_, v) => *v,
                    v => v,
                })
                .collect(),
        })
        .collect();
    let shipped = ShippedTable::new(schema, fast.file_columns(), files, stores.clone());
    ctx.register_table(name, Arc::new(shipped))
        .map_err(|e| in_table(&e))?;
    Ok(())
}
