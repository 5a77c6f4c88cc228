//! A Ballista cluster of `reclag` processes on loopback: a scheduler and two executors
//! of one core each, with their own work dirs and logs. The cluster tests and the
//! throughput harness's cluster section both start theirs here.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `reclag` child process, its standard error in a log file; killed on drop.
pub struct Proc {
    child: Child,
    pub log: PathBuf,
}

impl Proc {
    fn start(mut cmd: Command, log: PathBuf) -> Proc {
        let file = std::fs::File::create(&log).unwrap();
        cmd.stdout(Stdio::null()).stderr(file);
        Proc {
            child: cmd.spawn().unwrap(),
            log,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for `what` in the log; fails if the process exits first.
    #[track_caller]
    pub fn wait_for(&mut self, what: &str) {
        let t0 = Instant::now();
        while !self.log().contains(what) {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("exited ({status}) before '{what}':\n{}", self.log());
            }
            assert!(
                t0.elapsed() < Duration::from_secs(90),
                "no '{what}' within 90 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A scheduler and two executors, every one registered; all killed on drop.
pub struct Cluster {
    /// `df://HOST:PORT`, for `--cluster`.
    pub url: String,
    pub scheduler: Proc,
    pub executors: Vec<Proc>,
    pub work: Vec<PathBuf>,
}

impl Cluster {
    /// Starts the processes in `dir` (logs and work dirs), each from `reclag(args)`:
    /// a command that runs `reclag ARGS` with whatever environment the caller gives.
    pub fn start(dir: &Path, reclag: impl Fn(&[String]) -> Command) -> Cluster {
        let addr = format!("127.0.0.1:{}", free_port());
        let mut scheduler = Proc::start(
            reclag(&["cluster", "scheduler", "--bind", &addr].map(String::from)),
            dir.join("scheduler.log"),
        );
        scheduler.wait_for("listening on");
        let t0 = Instant::now();
        while TcpStream::connect(&addr).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "{}",
                scheduler.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut executors = Vec::new();
        let mut work = Vec::new();
        for i in 0..2 {
            let w = dir.join(format!("work-{i}"));
            let args = [
                "cluster".to_string(),
                "executor".into(),
                "--scheduler".into(),
                addr.clone(),
                "--bind".into(),
                format!("127.0.0.1:{}", free_port()),
                "--cores".into(),
                "1".into(),
                "--work-dir".into(),
                w.display().to_string(),
            ];
            executors.push(Proc::start(
                reclag(&args),
                dir.join(format!("executor-{i}.log")),
            ));
            work.push(w);
        }
        for e in &mut executors {
            e.wait_for("Executor registration succeed");
        }
        Cluster {
            url: format!("df://{addr}"),
            scheduler,
            executors,
            work,
        }
    }

    /// Every process's log, for a failure's message.
    pub fn logs(&self) -> String {
        std::iter::once(&self.scheduler)
            .chain(&self.executors)
            .map(|p| format!("== {}\n{}", p.log.display(), p.log()))
            .collect()
    }
}
