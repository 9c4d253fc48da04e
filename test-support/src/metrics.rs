//! Reading a service's `/metrics` in a test, strictly.
//!
//! The metrics recorder is process-wide (one per service process in production), so a test that
//! asserts on counters needs a process of its own: nextest runs each test in its own process;
//! `cargo test` runs many tests in one, where their counts would mix. [`require_process_per_test`]
//! makes that a failure with a reason instead of a wrong number.

/// Panics, with the reason, unless the test runs in a process of its own (under nextest).
pub fn require_process_per_test() {
    let mode = std::env::var("NEXTEST_EXECUTION_MODE").unwrap_or_default();
    assert!(
        mode == "process-per-test",
        "run the tests with `cargo nextest run` (a process per test): metrics are process-wide, \
         so under `cargo test` one test's counts would leak into another's"
    );
}

/// The sum of the samples of `series` whose labels contain `labels`, in Prometheus text
/// `exposition`; with `labels` empty, every sample of it. Panics, naming the series, when no
/// sample matches: a renamed or missing metric must not read as zero.
pub fn sum(exposition: &str, series: &str, labels: &str) -> f64 {
    let samples: Vec<f64> = exposition
        .lines()
        .filter(|l| {
            let rest = l.strip_prefix(series).unwrap_or_default();
            (rest.starts_with('{') || rest.starts_with(' ')) && l.contains(labels)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .collect();
    assert!(
        !samples.is_empty(),
        "no sample of {series}{{{labels}}} in /metrics: is the metric still called that, and \
         are its series created at start-up?"
    );
    samples.iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# TYPE jobs_total counter\n\
        jobs_total{kind=\"a\"} 2\n\
        jobs_total{kind=\"b\"} 3\n\
        jobs_total_other 7\n\
        gauge 1.5\n";

    #[test]
    fn sums_the_matching_samples_of_exactly_that_series() {
        assert_eq!(sum(TEXT, "jobs_total", ""), 5.0);
        assert_eq!(sum(TEXT, "jobs_total", "kind=\"b\""), 3.0);
        assert_eq!(sum(TEXT, "gauge", ""), 1.5);
    }

    #[test]
    #[should_panic(expected = "no sample of jobs_totl{} in /metrics")]
    fn a_missing_series_fails_with_its_name() {
        sum(TEXT, "jobs_totl", "");
    }

    #[test]
    #[should_panic(expected = "no sample of jobs_total{kind=\"c\"}")]
    fn a_missing_label_fails_too() {
        sum(TEXT, "jobs_total", "kind=\"c\"");
    }
}
