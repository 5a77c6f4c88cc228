//! The `reclag` command line. Argument structs live in the library so tests drive the
//! exact same parser in-process; `main.rs` only maps errors to exit codes. Each
//! command has its file (its arguments and how they become a job); `args` holds the
//! argument types several share.

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::error::{Error, Result};
use crate::store::{StoreEnv, Stores};

mod args;
mod calibrate;
#[cfg(feature = "cluster")]
mod cluster;
mod demo;
mod drift;
mod eval;
mod filter;
mod inspect;
mod score;
mod sql;
mod train;

pub use args::{PrecisionArg, RouteArg, RoutingArgs};
pub use calibrate::CalibrateArgs;
#[cfg(feature = "cluster")]
pub use cluster::{ClusterCommand, ExecutorArgs, SchedulerArgs};
pub use demo::DemoArgs;
pub use drift::{DriftRunArgs, DriftWatchArgs};
pub use eval::{EvalArgs, Format};
pub use filter::FilterArgs;
pub use inspect::InspectArgs;
pub use score::ScoreArgs;
pub use sql::SqlArgs;
pub use train::{InitArg, NormalizeArg, RecipeArg, TrainArgs};

const ABOUT: &str = "Find out-of-distribution (OOD) rows in tables of embeddings with RecLag.";
const LONG_ABOUT: &str = "\
Find out-of-distribution (OOD) rows in tables of embeddings with RecLag, a modern
Hopfield network whose rectified memory Lagrangian makes the origin an attractor:
rows that fall into it are OOD.

Typical workflow:
  reclag train --input train.parquet --embedding embedding --label label --output model.parquet
  reclag score --model model.parquet --input new.parquet --output scored.parquet --group label
  reclag eval  --model model.parquet --id test.parquet --ood web=web.parquet --group-from-logits logits
  reclag calibrate --model model.parquet --input fresh-id.parquet --output model-v2.parquet

Try it with no data of your own:
  reclag demo";

#[derive(Parser, Debug)]
#[command(name = "reclag", version, about = ABOUT, long_about = LONG_ABOUT, after_long_help = crate::store::ENV_HELP)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Fit a model from an in-distribution (ID) table.
    Train(TrainArgs),
    /// Add OOD scores to every row of a table.
    Score(ScoreArgs),
    /// Measure how well the model separates ID from OOD tables (AUROC, FPR95, AUPR).
    Eval(EvalArgs),
    /// Show what a model file contains: groups, sizes, thresholds, provenance.
    Inspect(InspectArgs),
    /// Run SQL over Parquet tables with the reclag functions (reclag_score, ...).
    Sql(SqlArgs),
    /// Keep only the in-distribution rows of a Parquet dataset (or only the OOD ones).
    Filter(FilterArgs),
    /// Re-threshold a model on new ID rows (new τ and calibration scores, same memories).
    Calibrate(CalibrateArgs),
    /// Detect drift in a partitioned lake, partition by partition (for nightly jobs).
    #[command(subcommand)]
    Drift(DriftCommand),
    /// Train, score and evaluate on a bundled real sample; no network or data needed.
    Demo(DemoArgs),
    /// Run a Ballista cluster's scheduler or executor, for `reclag sql --cluster`.
    #[cfg(feature = "cluster")]
    #[command(subcommand)]
    Cluster(ClusterCommand),
}

#[derive(Subcommand, Debug)]
pub enum DriftCommand {
    /// Score every partition not processed yet, test its OOD rate, publish metrics,
    /// the worst rows and report.html. Exit code 0: no drift; 2: drift; 1: error.
    Run(DriftRunArgs),
    /// Run a drift job now and then every --every, for machines without cron or a
    /// scheduler; one JSON line per run. SIGTERM or Ctrl-C stop it cleanly (a run in
    /// progress stops before its next partition).
    Watch(DriftWatchArgs),
}

/// What the `reclag` binary does: runs `args` against the process's environment and
/// standard output, prints an error to standard error, and gives the exit code
/// (0 done, 2 drift found, 1 error). A closed standard output (`| head`) ends the
/// command quietly with 0.
pub fn main_with<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    crate::alloc::tune();
    crate::io::configure_reading(read_settings_from_env());
    // Not locked: `reclag score --output -` writes its Arrow stream to stdout too.
    let mut stdout = std::io::stdout();
    match run(args, &mut stdout) {
        Ok(code) => code,
        Err(e) if e.is_broken_pipe() => ExitCode::SUCCESS,
        Err(e) => {
            eprint!("{}", error_chain(&e));
            ExitCode::from(1)
        }
    }
}

/// How the binary decodes inputs: `RECLAG_FAST_DECODE=0` reads every column with
/// parquet's general reader and `RECLAG_FUSED=0` scores whole Arrow columns instead
/// of pages (both for comparison); `RECLAG_ROW_GROUPS_IN_FLIGHT=N` decodes N row groups
/// at once (default: one per core).
fn read_settings_from_env() -> crate::io::ReadSettings {
    let on = |key: &str| std::env::var(key).map_or(true, |v| v != "0");
    let mut s = crate::io::ReadSettings {
        fast_decode: on("RECLAG_FAST_DECODE"),
        fused: on("RECLAG_FUSED"),
        ..Default::default()
    };
    if let Some(n) = std::env::var("RECLAG_ROW_GROUPS_IN_FLIGHT")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
    {
        s.row_groups_in_flight = Some(n);
    }
    s
}

/// `error: <message>`, then each cause the message does not already state, one per
/// line, so nothing in the chain is lost and nothing is said twice.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut said = e.to_string();
    let mut out = format!("error: {said}\n");
    let mut cause = e.source();
    while let Some(c) = cause {
        let msg = c.to_string();
        if !msg.is_empty() && !said.contains(&msg) {
            out.push_str(&format!("  caused by: {msg}\n"));
            said.push_str(&msg);
        }
        cause = c.source();
    }
    out
}

/// Parses `args` (including the program name) and runs the command, writing results
/// to `out`.
pub fn run<I, T>(args: I, out: &mut dyn Write) -> Result<ExitCode>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    run_with(args, StoreEnv::from_process(), out)
}

/// [`run`] with object stores configured from `env` instead of the process
/// environment.
pub fn run_with<I, T>(args: I, env: StoreEnv, out: &mut dyn Write) -> Result<ExitCode>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    run_in(args, Stores::new(env), out)
}

/// [`run`] against given stores (and their standard input and output).
pub fn run_in<I, T>(args: I, stores: Stores, out: &mut dyn Write) -> Result<ExitCode>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    match Cli::try_parse_from(args) {
        Ok(cli) => dispatch(cli, Arc::new(stores), out),
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ) =>
        {
            write!(out, "{e}").map_err(io_err)?;
            Ok(ExitCode::SUCCESS)
        }
        // clap renders its own "error: " prefix; `main` adds one to every error.
        Err(e) => {
            let text = e.to_string();
            let text = text.strip_prefix("error: ").unwrap_or(&text).trim_end();
            Err(Error::Usage(text.to_string()))
        }
    }
}

/// Resolves on SIGTERM (systemd, Kubernetes, `kill`) or Ctrl-C.
async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A multi-threaded tokio runtime for the commands that need one (SQL, watch).
fn runtime(context: &str) -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|source| Error::Io {
            context: context.into(),
            source,
        })
}

fn io_err(source: std::io::Error) -> Error {
    Error::Io {
        context: "writing output".into(),
        source,
    }
}

pub fn dispatch(cli: Cli, stores: Arc<Stores>, out: &mut dyn Write) -> Result<ExitCode> {
    match cli.command {
        Command::Train(a) => train::run(a, stores, out),
        Command::Score(a) => score::run(a, stores, out),
        Command::Filter(a) => filter::run(a, stores, out),
        Command::Calibrate(a) => calibrate::run(a, stores, out),
        Command::Drift(DriftCommand::Watch(a)) => drift::watch(a, stores, out),
        Command::Drift(DriftCommand::Run(a)) => drift::run(a, stores, out),
        Command::Eval(a) => eval::run(a, stores, out),
        Command::Inspect(a) => inspect::run(a, stores, out),
        Command::Sql(a) => sql::run(a, stores, out),
        #[cfg(feature = "cluster")]
        Command::Cluster(c) => cluster::run(c, stores, out),
        Command::Demo(a) => {
            crate::ops::demo::run(a.dir, out)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as _)
        }
    }

    /// Every cause is printed once: those the message already states are not repeated.
    #[test]
    fn errors_print_their_whole_chain_once() {
        let root = Layer("connection refused", None);
        let mid = Layer("reading s3://b/k: connection refused", Some(Box::new(root)));
        let top = Layer("scoring failed", Some(Box::new(mid)));
        assert_eq!(
            error_chain(&top),
            "error: scoring failed\n  caused by: reading s3://b/k: connection refused\n"
        );
        let hidden = Layer(
            "the model file is corrupt",
            Some(Box::new(Layer("bad magic bytes", None))),
        );
        assert_eq!(
            error_chain(&hidden),
            "error: the model file is corrupt\n  caused by: bad magic bytes\n"
        );
        assert_eq!(error_chain(&Layer("plain", None)), "error: plain\n");
    }
}
