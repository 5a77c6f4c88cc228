//! `reclag cluster scheduler|executor`: the processes of a Ballista cluster that runs
//! `reclag sql --cluster`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Subcommand};

use crate::cluster::process::{self, ExecutorOptions};
use crate::error::{Error, Result};
use crate::store::Stores;

use super::*;

/// Said in both commands' help and as each process starts.
macro_rules! security {
    () => {
        "Ballista has no authentication of its own: anyone who reaches these ports can run
queries with this process's object-store credentials and read its results. Both
commands bind to loopback unless --bind says otherwise; on a network, put the
cluster on a private one or behind a firewall."
    };
}
const SECURITY: &str = security!();

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Run a Ballista scheduler with the reclag functions: it plans the queries that
    /// `reclag sql --cluster df://HOST:PORT` sends and hands their tasks to executors.
    #[command(after_long_help = SCHEDULER_HELP)]
    Scheduler(SchedulerArgs),
    /// Run a Ballista executor with the reclag functions: it reads its share of the
    /// tables with the fast list reader, loads the models the plan pins and scores.
    #[command(after_long_help = EXECUTOR_HELP)]
    Executor(ExecutorArgs),
}

const SCHEDULER_HELP: &str = concat!(
    "\
Example (one scheduler, two executors, then a query):
  reclag cluster scheduler --bind 127.0.0.1:50050
  reclag cluster executor --scheduler 127.0.0.1:50050 --bind 127.0.0.1:50051 --work-dir /var/lib/reclag/a
  reclag cluster executor --scheduler 127.0.0.1:50050 --bind 127.0.0.1:50061 --work-dir /var/lib/reclag/b
  reclag sql --cluster df://127.0.0.1:50050 --table t=s3://lake/events/ --model prod=s3://models/m.parquet \\
    \"SELECT count(*) FROM t WHERE reclag_is_ood('prod', embedding)\"

Object-store credentials come from the same environment variables as every reclag
command (see `reclag --help`); the scheduler needs them to plan (it reads footers and
models), each executor to read its row groups. Stop with SIGTERM or Ctrl-C.

",
    security!()
);

const EXECUTOR_HELP: &str = concat!(
    "\
Ports: --bind is the Arrow Flight port (results and shuffle data, fetched by the
client and other executors). The executor also serves gRPC for the tasks the
scheduler pushes, on the next port (or a free one if that is taken, or --grpc-port);
it prints both as it starts.

An executor keeps shuffle files and stage outputs in --work-dir until the scheduler
says a job's data may go. Object-store credentials come from the same environment
variables as every reclag command. Stop with SIGTERM or Ctrl-C.

",
    security!()
);

#[derive(Args, Debug)]
pub struct SchedulerArgs {
    /// Address to listen on (clients and executors connect here).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:50050")]
    pub bind: SocketAddr,
}

#[derive(Args, Debug)]
pub struct ExecutorArgs {
    /// The scheduler's address, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub scheduler: String,
    /// Address for this executor's Arrow Flight server; other processes reach the
    /// executor here, so on a network give an address they can route to.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:50051")]
    pub bind: SocketAddr,
    /// Port for the executor's gRPC server (default: --bind's port + 1, or a free one).
    #[arg(long, value_name = "PORT")]
    pub grpc_port: Option<u16>,
    /// Tasks run at once (default: one per core).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub cores: usize,
    /// Directory for shuffle files and stage outputs (default: a new temporary
    /// directory, removed when the executor stops).
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
}

fn scheduler_of(s: &str) -> Result<(String, u16)> {
    let s = s.strip_prefix("df://").unwrap_or(s);
    crate::cluster::scheduler_address(&format!("df://{s}"))
        .map_err(|_| Error::Usage(format!("--scheduler {s}: expected HOST:PORT")))
}

pub(super) fn run(c: ClusterCommand, stores: Arc<Stores>, out: &mut dyn Write) -> Result<ExitCode> {
    crate::cluster::install_log();
    let rt = runtime("starting the cluster runtime")?;
    match c {
        ClusterCommand::Scheduler(a) => {
            let fut = process::scheduler(
                a.bind,
                stores,
                |addr| {
                    eprintln!(
                        "reclag cluster scheduler: listening on {addr}; run queries with `reclag sql --cluster df://{addr} ...`\n{SECURITY}"
                    )
                },
                terminated(),
            );
            rt.block_on(fut)?;
        }
        ClusterCommand::Executor(a) => {
            let scheduler = scheduler_of(&a.scheduler)?;
            let (work_dir, _temp) = match a.work_dir {
                Some(d) => (d, None),
                None => {
                    let t = tempfile::Builder::new()
                        .prefix("reclag-executor-")
                        .tempdir()
                        .map_err(|source| Error::Io {
                            context: "creating the executor's work dir".into(),
                            source,
                        })?;
                    (t.path().to_path_buf(), Some(t))
                }
            };
            let opts = ExecutorOptions {
                scheduler: scheduler.clone(),
                bind: a.bind,
                grpc_port: a.grpc_port,
                cores: a.cores,
                work_dir: work_dir.clone(),
            };
            let fut = process::executor(opts, stores, |flight, grpc| {
                eprintln!(
                    "reclag cluster executor: Flight on {flight}, gRPC on {grpc}, work dir {}, scheduler {}:{}\n{SECURITY}",
                    work_dir.display(),
                    scheduler.0,
                    scheduler.1
                )
            });
            rt.block_on(fut)?;
        }
    }
    let _ = out.flush();
    Ok(ExitCode::SUCCESS)
}
