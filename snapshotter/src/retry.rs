//! Trying a network request again after a transient failure, with exponential backoff: registry
//! pulls and pushes here, and the builder's `ADD <url>` downloads, share this one policy and loop.
//! Each caller keeps its own rule for which failures are transient ([`Transient`]).

use std::future::Future;
use std::time::Duration;

/// When and how long to retry transient failures (5xx, 408, 429, connection errors, timeouts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries in all, including the first (0 counts as 1).
    pub attempts: u32,
    /// Wait before the second try; doubles for each further one, up to `max_backoff`.
    pub initial_backoff: Duration,
    /// Upper bound of a wait, also applied to a server's `Retry-After`.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(8),
        }
    }
}

impl RetryPolicy {
    /// The wait after try number `failed_attempt` (counting from 1) failed: `initial_backoff`
    /// doubled for each earlier failure, or the server's `retry_after` when that is longer, and
    /// never more than `max_backoff`.
    pub fn backoff(&self, failed_attempt: u32, retry_after: Option<Duration>) -> Duration {
        let factor = 1u32 << failed_attempt.saturating_sub(1).min(16);
        self.initial_backoff
            .saturating_mul(factor)
            .max(retry_after.unwrap_or_default())
            .min(self.max_backoff)
    }
}

/// What a failed try says about trying again.
pub trait Transient {
    /// Whether another try could succeed.
    fn is_transient(&self) -> bool;

    /// How long the server asked to be left alone (`Retry-After`), when it said.
    fn retry_after(&self) -> Option<Duration> {
        None
    }
}

/// Why [`retry`] stopped: the last failure and how many tries were made.
#[derive(Debug)]
pub struct GaveUp<E> {
    pub error: E,
    pub attempts: u32,
}

/// Runs `op` until it succeeds, fails in a way that is not [`Transient`], or `policy`'s tries are
/// spent. Before each wait, `on_retry` hears the failure, the number of the try that failed (from
/// 1), how long that try took and the wait: a log line made of them says when and why the next
/// try starts, whenever the line is shown.
pub async fn retry<T, E, F, Fut>(
    policy: &RetryPolicy,
    mut op: F,
    mut on_retry: impl FnMut(&E, u32, Duration, Duration),
) -> Result<T, GaveUp<E>>
where
    E: Transient,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut attempt = 1;
    loop {
        let started = tokio::time::Instant::now();
        match op().await {
            Ok(v) => return Ok(v),
            Err(error) if error.is_transient() && attempt < policy.attempts => {
                let delay = policy.backoff(attempt, error.retry_after());
                on_retry(&error, attempt, started.elapsed(), delay);
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
            Err(error) => {
                return Err(GaveUp {
                    error,
                    attempts: attempt,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let p = RetryPolicy {
            attempts: 9,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1000),
        };
        assert_eq!(p.backoff(1, None), Duration::from_millis(100));
        assert_eq!(p.backoff(2, None), Duration::from_millis(200));
        assert_eq!(p.backoff(3, None), Duration::from_millis(400));
        assert_eq!(p.backoff(4, None), Duration::from_millis(800));
        assert_eq!(p.backoff(5, None), Duration::from_millis(1000));
        assert_eq!(p.backoff(10, None), Duration::from_millis(1000));
        assert_eq!(p.backoff(u32::MAX, None), Duration::from_millis(1000));
        // The download copy subtracted 1 from the try number unchecked; 0 is the first wait.
        assert_eq!(p.backoff(0, None), Duration::from_millis(100));
    }

    #[test]
    fn backoff_honours_retry_after_within_the_cap() {
        let p = RetryPolicy {
            attempts: 4,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        };
        assert_eq!(
            p.backoff(1, Some(Duration::from_millis(700))),
            Duration::from_millis(700)
        );
        // A shorter Retry-After does not cut the backoff short.
        assert_eq!(
            p.backoff(3, Some(Duration::from_millis(10))),
            Duration::from_millis(400)
        );
        assert_eq!(
            p.backoff(1, Some(Duration::from_secs(3600))),
            Duration::from_secs(1)
        );
    }

    #[derive(Debug, PartialEq)]
    struct Failed {
        transient: bool,
    }

    impl Transient for Failed {
        fn is_transient(&self) -> bool {
            self.transient
        }
    }

    fn quick(attempts: u32) -> RetryPolicy {
        RetryPolicy {
            attempts,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(4),
        }
    }

    /// Runs [`retry`] on an operation that fails `failures` times (transient or not) and then
    /// succeeds; returns its outcome (the try that succeeded, or how many were made), the tries
    /// made and the retries heard.
    async fn run(
        attempts: u32,
        failures: u32,
        transient: bool,
    ) -> (Result<u32, u32>, u32, Vec<(u32, Duration)>) {
        let mut tries = 0;
        let mut heard = Vec::new();
        let out = retry(
            &quick(attempts),
            || {
                tries += 1;
                let n = tries;
                async move {
                    if n <= failures {
                        Err(Failed { transient })
                    } else {
                        Ok(n)
                    }
                }
            },
            |_, attempt, _, delay| heard.push((attempt, delay)),
        )
        .await;
        (out.map_err(|gave_up| gave_up.attempts), tries, heard)
    }

    #[tokio::test]
    async fn transient_failures_are_tried_again_until_the_budget_is_spent() {
        let (out, tries, heard) = run(3, u32::MAX, true).await;
        assert_eq!((out, tries), (Err(3), 3));
        assert_eq!(
            heard,
            [(1, Duration::from_millis(1)), (2, Duration::from_millis(2))]
        );
        let (out, tries, heard) = run(5, 1, true).await;
        assert_eq!((out, tries, heard.len()), (Ok(2), 2, 1));
    }

    /// The retry line said which try failed but not when: the time it was shown at was taken for
    /// it. `on_retry` hears how long the failed try took.
    #[tokio::test]
    async fn on_retry_hears_how_long_the_failed_try_took() {
        let mut heard = Vec::new();
        let out = retry(
            &quick(2),
            || async {
                tokio::time::sleep(Duration::from_millis(30)).await;
                Err::<(), _>(Failed { transient: true })
            },
            |_, attempt, took, _| heard.push((attempt, took)),
        )
        .await;
        assert_eq!(out.map_err(|g| g.attempts).unwrap_err(), 2);
        assert_eq!(heard.len(), 1, "{heard:?}");
        assert_eq!(heard[0].0, 1);
        assert!(heard[0].1 >= Duration::from_millis(30), "{heard:?}");
    }

    #[tokio::test]
    async fn a_permanent_failure_stops_at_once() {
        let (out, tries, heard) = run(5, u32::MAX, false).await;
        assert_eq!((out, tries), (Err(1), 1));
        assert!(heard.is_empty(), "a permanent failure is not retried");
    }

    #[tokio::test]
    async fn no_attempts_still_tries_once() {
        let (out, tries, _) = run(0, u32::MAX, true).await;
        assert_eq!((out, tries), (Err(1), 1));
    }
}
