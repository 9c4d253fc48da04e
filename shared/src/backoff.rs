//! Capped exponential backoff with jitter, for reconnects and job retries alike, and [`retry`],
//! the one loop every service uses to retry an operation until it works or shutdown comes.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How [`retry`] waits between failures: jittered, from `base`, doubling, capped at `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// The wait after the first failure (before jitter).
    pub base: Duration,
    /// The longest wait.
    pub max: Duration,
}

/// Runs `attempt` until it succeeds: `Some(value)`; `None` when `shutdown` is cancelled during
/// a wait. An attempt under way is never abandoned (a transaction finishes or fails by itself);
/// `on_error` sees each failure with the count so far (to log it), before the jittered wait.
pub async fn retry<T, E, F, Fut>(
    policy: Policy,
    shutdown: &CancellationToken,
    mut attempt: F,
    mut on_error: impl FnMut(&E, u32),
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut failures = 0;
    loop {
        match attempt().await {
            Ok(value) => return Some(value),
            Err(e) => {
                failures += 1;
                on_error(&e, failures);
            }
        }
        tokio::select! {
            () = tokio::time::sleep(jittered(policy.base, policy.max, failures)) => {},
            () = shutdown.cancelled() => return None,
        }
    }
}

/// `base · 2^(attempt-1)`, capped at `max`; attempt 1 is the first retry.
pub fn exponential(base: Duration, max: Duration, attempt: u32) -> Duration {
    let factor = 1u32
        .checked_shl(attempt.saturating_sub(1))
        .unwrap_or(u32::MAX);
    base.saturating_mul(factor).min(max)
}

/// [`exponential`] scaled by a random factor in [0.5, 1.0], so that many clients that lost the
/// same broker do not all come back in the same millisecond.
pub fn jittered(base: Duration, max: Duration, attempt: u32) -> Duration {
    let d = exponential(base, max, attempt);
    // A cheap random source is enough for spreading reconnects.
    let r = uuid::Uuid::new_v4().as_u128() as u64 % 1000;
    d.mul_f64(0.5 + r as f64 / 2000.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn doubles_then_caps() {
        let got: Vec<_> = (1..=6)
            .map(|a| exponential(S, S * 10, a).as_secs())
            .collect();
        assert_eq!(got, [1, 2, 4, 8, 10, 10]);
        assert_eq!(exponential(S, S * 10, 200), S * 10, "no overflow");
    }

    #[test]
    fn jitter_stays_within_half_to_full() {
        for a in 1..=5 {
            let full = exponential(S, S * 30, a);
            let j = jittered(S, S * 30, a);
            assert!(j >= full / 2 && j <= full, "{j:?} vs {full:?}");
        }
    }

    const FAST: Policy = Policy {
        base: Duration::from_millis(100),
        max: Duration::from_secs(1),
    };

    #[tokio::test(start_paused = true)]
    async fn retries_until_it_works_reporting_each_failure() {
        let calls = Cell::new(0);
        let mut seen = Vec::new();
        let got = retry(
            FAST,
            &CancellationToken::new(),
            || {
                calls.set(calls.get() + 1);
                let n = calls.get();
                async move { if n < 4 { Err(n) } else { Ok("up") } }
            },
            |e, failures| seen.push((*e, failures)),
        )
        .await;
        assert_eq!(got, Some("up"));
        assert_eq!(seen, [(1, 1), (2, 2), (3, 3)]);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_the_waiting() {
        let shutdown = CancellationToken::new();
        let calls = Cell::new(0);
        let got: Option<()> = retry(
            FAST,
            &shutdown,
            || {
                calls.set(calls.get() + 1);
                async { Err(()) }
            },
            |_, failures| {
                if failures == 3 {
                    shutdown.cancel();
                }
            },
        )
        .await;
        assert_eq!(got, None);
        assert_eq!(calls.get(), 3, "no attempt after shutdown");
    }
}
