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
    exponential(base, max, attempt).mul_f64(0.5 + unit_random() / 2.0)
}

/// A delay drawn uniformly from `[0, exponential(base, max, attempt)]` ("full jitter"): what
/// many jobs failing at the same moment wait before their next attempt, so that they come back
/// spread over the whole step instead of together.
pub fn full_jitter(base: Duration, max: Duration, attempt: u32) -> Duration {
    exponential(base, max, attempt).mul_f64(unit_random())
}

/// A number in `[0, 1)`, from the OS's random source via a v4 UUID: jitter needs no better.
fn unit_random() -> f64 {
    (uuid::Uuid::new_v4().as_u128() >> 75) as f64 / (1u64 << 53) as f64
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

    #[test]
    fn full_jitter_spreads_over_the_whole_step() {
        let step = exponential(S, S * 30, 3);
        let draws: Vec<Duration> = (0..2000).map(|_| full_jitter(S, S * 30, 3)).collect();
        assert!(draws.iter().all(|d| *d <= step));
        // Each quarter of the step gets its share (2000 draws: ~500 each; far from 0 or 2000).
        for q in 0..4u32 {
            let (lo, hi) = (step * q / 4, step * (q + 1) / 4);
            let n = draws.iter().filter(|d| **d >= lo && **d < hi).count();
            assert!((300..700).contains(&n), "quarter {q}: {n} of 2000");
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
