//! The invocation's time budget, derived from the Lambda deadline: no API call starts that
//! cannot finish before it, and every call is cut where the report still has time to go out.
//!
//! After the last API call the function still logs, publishes the report (each sink bounded
//! by `NOTIFY_TIMEOUT_MS`) and answers; that time is kept back. A write is cut earlier still,
//! so that one re-read can tell whether a write whose answer never came landed.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::error::Error;

/// Kept for logging, metrics and the response once the report is sent.
const ANSWER_MARGIN: Duration = Duration::from_millis(500);
/// Kept after a write for the re-read that confirms whether it landed.
const CONFIRM_TIME: Duration = Duration::from_secs(1);
/// How long that re-read may take (within [`CONFIRM_TIME`]).
pub const CONFIRM_READ_TIME: Duration = Duration::from_millis(900);
/// No call starts with less than this left: it could not get an answer in time.
const MIN_CALL_TIME: Duration = Duration::from_millis(250);

/// How long API calls may take in this invocation.
#[derive(Debug, Clone, Copy)]
pub struct TimeBox {
    /// When the last API answer must be in (`None`: no deadline, as in tests and CLIs).
    until: Option<Instant>,
    /// What was kept back for the report, for the message.
    kept: Duration,
}

/// Whether a call changes something (and so needs time to confirm a lost answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// A read, or a write whose outcome nobody confirms (an Event, a budget slot).
    Read,
    /// A change to the target object.
    Write,
}

impl TimeBox {
    /// The budget of an invocation ending at `deadline`, keeping `report_time` (the sinks'
    /// timeout) for the report.
    pub fn new(deadline: Option<Instant>, report_time: Duration) -> Self {
        let kept = report_time + ANSWER_MARGIN;
        TimeBox {
            until: deadline.map(|d| d.checked_sub(kept).unwrap_or(d)),
            kept,
        }
    }

    /// Time left for a call of this kind.
    fn left(&self, call: Call) -> Option<Duration> {
        let until = self.until?;
        let left = until.saturating_duration_since(Instant::now());
        Some(match call {
            Call::Read => left,
            Call::Write => left.saturating_sub(CONFIRM_TIME),
        })
    }

    /// Runs `request` (described by `what`, e.g. `patch Deployment shop/x`) if it can finish
    /// in time, cut at the time left. The outer error is the time running out; the inner
    /// result is the call's own.
    pub async fn call<T, E>(
        &self,
        call: Call,
        what: &str,
        request: impl Future<Output = Result<T, E>>,
    ) -> Result<Result<T, E>, Error> {
        let Some(left) = self.left(call) else {
            return Ok(request.await);
        };
        if left < MIN_CALL_TIME {
            return Err(Error::OutOfTime(format!(
                "{what} not started: {} ms left before the Lambda deadline, after keeping {} ms for the report{}; nothing was changed by it",
                left.as_millis(),
                self.kept.as_millis(),
                if call == Call::Write {
                    " and a confirming read"
                } else {
                    ""
                }
            )));
        }
        tokio::time::timeout(left, request).await.map_err(|_| {
            Error::OutOfTime(format!(
                "{what} got no answer in the {} ms left before the Lambda deadline",
                left.as_millis()
            ))
        })
    }

    /// Whether a new target can still be started (room for at least a read).
    pub fn check(&self, what: &str) -> Result<(), Error> {
        match self.left(Call::Read) {
            Some(left) if left < MIN_CALL_TIME => Err(Error::OutOfTime(format!(
                "{what} not started: {} ms left before the Lambda deadline, after keeping {} ms for the report; nothing was changed",
                left.as_millis(),
                self.kept.as_millis()
            ))),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn calls_are_cut_where_the_report_still_has_time() {
        let no_deadline = TimeBox::new(None, Duration::from_secs(3));
        assert_eq!(
            no_deadline
                .call(Call::Write, "x", async { Ok::<_, ()>(1) })
                .await
                .expect("in time"),
            Ok(1)
        );
        // 3.2 s to the deadline, 3 s for the report: 0.2 s is too little to start a read.
        let tight = TimeBox::new(
            Some(Instant::now() + Duration::from_millis(3700)),
            Duration::from_secs(3),
        );
        let err = tight
            .call(Call::Read, "get Deployment shop/x", async {
                Ok::<_, ()>(1)
            })
            .await
            .expect_err("not started");
        assert!(err.to_string().contains("not started"), "{err}");
        assert!(err.is_retryable());
        assert!(tight.check("Deployment shop/x").is_err());
        // 1.5 s left for reads, 0.5 s for a write; a slow write is cut.
        let roomy = TimeBox::new(
            Some(Instant::now() + Duration::from_millis(5000)),
            Duration::from_secs(3),
        );
        let started = Instant::now();
        let err = roomy
            .call(Call::Write, "patch Deployment shop/x", async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok::<_, ()>(1)
            })
            .await
            .expect_err("cut");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "cut at 0.5 s, not after 5 s"
        );
        assert!(err.to_string().contains("got no answer"), "{err}");
    }
}
