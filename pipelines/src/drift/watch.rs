//! `reclag drift watch`: run a job every interval, for users without a scheduler.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::{DriftJob, DriftSummary};
use crate::error::{Error, Result};

/// Parses `30s`, `15m`, `6h`, `1d` (or a combination such as `1h30m`).
pub fn parse_every(s: &str) -> Result<Duration> {
    super::spec::parse_duration(s)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            Error::Usage(format!(
                "--every {s}: expected a duration such as 30s, 15m, 6h, 24h or 1d"
            ))
        })
}

/// Runs `job` now and then every `every` until `shutdown` resolves. Each run happens
/// on a blocking thread (scoring is CPU work); its result goes to `on_run`. A
/// shutdown during a run stops it before its next partition and waits for it, so
/// nothing is left half-written. A failed run is reported and the watch goes on: a
/// lake that is briefly unreachable should not end the schedule.
pub async fn watch(
    job: DriftJob,
    every: Duration,
    shutdown: impl Future<Output = ()>,
    mut on_run: impl FnMut(Result<DriftSummary>),
) {
    let stop = Arc::new(AtomicBool::new(false));
    let job = Arc::new(job.cancel_flag(stop.clone()));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tick.tick() => {}
        }
        let j = job.clone();
        let mut run = tokio::task::spawn_blocking(move || j.run());
        let result = tokio::select! {
            r = &mut run => r,
            _ = &mut shutdown => {
                stop.store(true, Ordering::SeqCst);
                let r = run.await;
                on_run(r.unwrap_or_else(|e| Err(Error::Usage(format!("the run panicked: {e}")))));
                return;
            }
        };
        on_run(result.unwrap_or_else(|e| Err(Error::Usage(format!("the run panicked: {e}")))));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_every("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_every("1h30m").unwrap(), Duration::from_secs(5_400));
        assert_eq!(parse_every("1d").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_every("45s").unwrap(), Duration::from_secs(45));
        for bad in ["", "24", "h", "3x", "0s"] {
            let e = parse_every(bad).unwrap_err().to_string();
            assert!(e.contains("expected a duration"), "{bad}: {e}");
        }
    }
}
