//! The recorder's Prometheus text rendered as OpenMetrics 1.0, with exemplars on the bucket lines.
//!
//! The two formats differ in little: a counter's family is named without `_total` (its samples
//! keep it), HELP escapes double quotes, there are no blank lines, and the text ends in `# EOF`.
//! Spec: <https://github.com/prometheus/OpenMetrics/blob/main/specification/OpenMetrics.md>.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::time::UNIX_EPOCH;

use super::exemplars::{self, Exemplar};

/// The `Content-Type` of [`convert`]'s output.
pub(super) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `text` (Prometheus text format 0.0.4, as `metrics-exporter-prometheus` writes it) as
/// OpenMetrics, the latency histograms' buckets with their exemplars.
pub(super) fn convert(text: &str) -> String {
    let counters: HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(text.len() + text.len() / 4);
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (family, kind) = family(name, kind, &counters);
            let _ = writeln!(out, "# TYPE {family} {kind}");
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let (family, _) = family(name, "", &counters);
            let _ = writeln!(out, "# HELP {family} {}", escape_help(help));
        } else {
            out.push_str(line);
            if let Some(e) = bucket_exemplar(line) {
                write_exemplar(&mut out, &e);
            }
            out.push('\n');
        }
    }
    out.push_str("# EOF\n");
    out
}

/// A family's OpenMetrics name and type: a counter's family drops `_total`; a counter without it
/// cannot be an OpenMetrics counter (its sample must be named `<family>_total`), so it is `unknown`.
fn family<'a>(name: &'a str, kind: &'a str, counters: &HashSet<&str>) -> (&'a str, &'a str) {
    if !counters.contains(name) {
        return (name, kind);
    }
    match name.strip_suffix("_total") {
        Some(family) => (family, "counter"),
        None => (name, "unknown"),
    }
}

/// OpenMetrics escapes `"` in HELP too; the exporter escapes only `\` and newlines there.
fn escape_help(help: &str) -> String {
    let mut out = String::with_capacity(help.len());
    let mut escaped = false;
    for c in help.chars() {
        if c == '"' && !escaped {
            out.push('\\');
        }
        escaped = c == '\\' && !escaped;
        out.push(c);
    }
    out
}

/// The exemplar for a line `<name>_bucket{<labels>,le="<le>"} <count>`, if it has one.
fn bucket_exemplar(line: &str) -> Option<Exemplar> {
    let (series, _count) = line.rsplit_once(' ')?;
    let (name, labels) = series.split_once('{')?;
    let name = name.strip_suffix("_bucket")?;
    let labels = labels.strip_suffix('}')?;
    let (labels, le) = match labels.rsplit_once(",le=\"") {
        Some((rest, le)) => (rest, le),
        None => ("", labels.strip_prefix("le=\"")?),
    };
    exemplars::find(name, labels, le.strip_suffix('"')?)
}

fn write_exemplar(out: &mut String, e: &Exemplar) {
    let at = e.at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let _ = write!(
        out,
        " # {{trace_id=\"{}\",span_id=\"{}\"}} {} {}.{:03}",
        e.trace_id,
        e.span_id,
        e.value,
        at.as_secs(),
        at.subsec_millis()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP jobs_total Jobs \"done\".\n# TYPE jobs_total counter\njobs_total{kind=\"a\"} 3\n\n# TYPE up gauge\nup 1\n\n# TYPE odd counter\nodd 2\n\n";

    #[test]
    fn counters_lose_total_in_the_family_name_only_and_the_text_ends_in_eof() {
        let om = convert(TEXT);
        assert_eq!(
            om,
            "# HELP jobs Jobs \\\"done\\\".\n# TYPE jobs counter\njobs_total{kind=\"a\"} 3\n# TYPE up gauge\nup 1\n# TYPE odd unknown\nodd 2\n# EOF\n"
        );
    }

    #[test]
    fn help_keeps_escapes_it_already_has() {
        assert_eq!(escape_help(r#"a \" b \\ "c""#), r#"a \" b \\ \"c\""#);
    }
}
