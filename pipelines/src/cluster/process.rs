//! The cluster's two long-running processes: Ballista's scheduler and executor, each
//! with the reclag codec, reclag's object stores and the functions' model loader.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;

use ballista_core::registry::BallistaFunctionRegistry;
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::start_server;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::SessionConfig;

use super::{StoresRegistry, cluster_codec};
use crate::error::{Error, Result};
use crate::store::Stores;

/// How often executors report to the scheduler, and how long the scheduler waits for
/// a report before it takes an executor for dead and reruns its tasks elsewhere.
/// Ballista's defaults (60 s and 180 s) leave a query waiting minutes on a killed
/// executor.
const HEARTBEAT_SECONDS: u64 = 5;
const EXECUTOR_TIMEOUT_SECONDS: u64 = 20;

fn ballista(doing: &str, e: impl std::fmt::Display) -> Error {
    Error::Usage(format!("{doing}: {e}"))
}

/// A runtime whose object stores come from reclag's configuration.
fn runtime(
    stores: &Arc<Stores>,
) -> datafusion::error::Result<Arc<datafusion::execution::runtime_env::RuntimeEnv>> {
    RuntimeEnvBuilder::new()
        .with_object_store_registry(Arc::new(StoresRegistry::new(stores.clone())))
        .build_arc()
}

/// Runs a scheduler on `bind` until `stop` resolves. `ready` hears the address once
/// the port is bound.
pub async fn scheduler(
    bind: SocketAddr,
    stores: Arc<Stores>,
    ready: impl FnOnce(SocketAddr),
    stop: impl std::future::Future<Output = ()>,
) -> Result<()> {
    // Fail on a taken port with our message, before Ballista's server starts.
    TcpListener::bind(bind)
        .map_err(|e| ballista(&format!("binding the scheduler to {bind}"), e))?;
    let codec = cluster_codec(stores.clone(), false);
    let session_stores = stores.clone();
    let config = SchedulerConfig {
        bind_host: bind.ip().to_string(),
        bind_port: bind.port(),
        external_host: bind.ip().to_string(),
        executor_timeout_seconds: EXECUTOR_TIMEOUT_SECONDS,
        expire_dead_executor_interval_seconds: HEARTBEAT_SECONDS,
        override_logical_codec: Some(codec.clone()),
        override_physical_codec: Some(codec),
        override_session_builder: Some(Arc::new(move |config: SessionConfig| {
            let state = ballista_core::utils::default_session_builder(config)?;
            Ok(SessionStateBuilder::new_from_existing(state)
                .with_runtime_env(runtime(&session_stores)?)
                .build())
        })),
        ..Default::default()
    };
    let cluster = BallistaCluster::new_from_config(&config)
        .await
        .map_err(|e| ballista("starting the scheduler", e))?;
    ready(bind);
    tokio::select! {
        r = start_server(cluster, bind, Arc::new(config)) => {
            r.map_err(|e| ballista(&format!("the scheduler on {bind}"), e))
        }
        _ = stop => Ok(()),
    }
}

/// An executor's settings, as `reclag cluster executor` takes them.
#[derive(Clone, Debug)]
pub struct ExecutorOptions {
    /// The scheduler's address.
    pub scheduler: (String, u16),
    /// Where the executor serves Arrow Flight (results and shuffle data).
    pub bind: SocketAddr,
    /// The executor's gRPC port (tasks pushed by the scheduler); `None`: the next
    /// port after `bind`'s if free, else any free one.
    pub grpc_port: Option<u16>,
    /// Tasks at once (0: one per core).
    pub cores: usize,
    /// Shuffle files and stage outputs.
    pub work_dir: PathBuf,
}

/// The gRPC port for `opts`: the one given, else `bind`'s port + 1 when free, else a
/// free port the system picks.
pub fn grpc_port(opts: &ExecutorOptions) -> Result<u16> {
    if let Some(p) = opts.grpc_port {
        return Ok(p);
    }
    let ip = opts.bind.ip();
    if let Some(next) = opts.bind.port().checked_add(1)
        && opts.bind.port() != 0
        && TcpListener::bind((ip, next)).is_ok()
    {
        return Ok(next);
    }
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| ballista(&format!("finding a free port on {ip}"), e))
}

/// Runs an executor until SIGTERM or Ctrl-C (Ballista's own handlers: it finishes
/// its running tasks' bookkeeping and leaves the cluster). `ready` hears the Flight
/// and gRPC addresses before it connects.
pub async fn executor(
    opts: ExecutorOptions,
    stores: Arc<Stores>,
    ready: impl FnOnce(SocketAddr, SocketAddr),
) -> Result<()> {
    TcpListener::bind(opts.bind)
        .map_err(|e| ballista(&format!("binding the executor to {}", opts.bind), e))?;
    let grpc = grpc_port(&opts)?;
    std::fs::create_dir_all(&opts.work_dir).map_err(|source| Error::Io {
        context: format!("creating the work dir {}", opts.work_dir.display()),
        source,
    })?;
    let codec = cluster_codec(stores.clone(), true);
    let functions = SessionStateBuilder::new().with_default_features().build();
    let runtime_stores = stores.clone();
    let config = ExecutorProcessConfig {
        bind_host: opts.bind.ip().to_string(),
        external_host: Some(opts.bind.ip().to_string()),
        port: opts.bind.port(),
        grpc_port: grpc,
        scheduler_host: opts.scheduler.0.clone(),
        scheduler_port: opts.scheduler.1,
        scheduler_connect_timeout_seconds: 10,
        vcores: opts.cores,
        work_dir: Some(opts.work_dir.display().to_string()),
        executor_heartbeat_interval_seconds: HEARTBEAT_SECONDS,
        override_logical_codec: Some(codec.clone()),
        override_physical_codec: Some(codec),
        override_function_registry: Some(Arc::new(BallistaFunctionRegistry::from(&functions))),
        override_runtime_producer: Some(Arc::new(move |_: &SessionConfig| {
            runtime(&runtime_stores)
        })),
        ..Default::default()
    };
    ready(opts.bind, SocketAddr::new(opts.bind.ip(), grpc));
    start_executor_process(Arc::new(config))
        .await
        .map_err(|e| ballista(&format!("the executor on {}", opts.bind), e))
}
