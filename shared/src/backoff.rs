//! Capped exponential backoff with jitter, for reconnects and job retries alike.

use std::time::Duration;

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
}
