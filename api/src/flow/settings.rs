//! `JOB_LIMITS`: a deployment's overrides of the limits and uniqueness the contract declares,
//! e.g. `hash:concurrency=4,rate=100/s;sleep:concurrency_per_key=2,rate_per_key=1000/h`.
//!
//! Per kind, `,`-separated: `concurrency`, `concurrency_per_key` (a number, or `none`); `rate`,
//! `rate_per_key` (`<count>/<period>` with a period of `s`, `m`, `h`, `d` or `<n><unit>` such
//! as `10s`; or `none`); `unique` (`payload`, fields joined by `+`, or `none`); `unique_within`
//! (a span such as `60s`, or `0`: while unfinished).

use std::time::Duration;

use jobs_contract::flow::Rate;

use super::{KindFlow, UniqueRule};

/// Most jobs a concurrency limit may allow at once.
pub const MAX_CONCURRENCY: u32 = 100_000;
/// Most jobs a rate may allow per period.
pub const MAX_RATE_COUNT: u32 = 1_000_000;

/// One kind's overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    /// The kind.
    pub kind: String,
    settings: Vec<Setting>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Setting {
    Concurrency(Option<u32>),
    ConcurrencyPerKey(Option<u32>),
    Rate(Option<Rate>),
    RatePerKey(Option<Rate>),
    Unique(Option<Vec<String>>),
    UniqueWithin(Option<Duration>),
}

impl Override {
    /// Applies the overrides to `flow`, in order.
    pub fn apply(&self, flow: &mut KindFlow) {
        for s in &self.settings {
            match s {
                Setting::Concurrency(n) => flow.limits.concurrency = *n,
                Setting::ConcurrencyPerKey(n) => flow.limits.concurrency_per_key = *n,
                Setting::Rate(r) => flow.limits.rate = *r,
                Setting::RatePerKey(r) => flow.limits.rate_per_key = *r,
                Setting::Unique(None) => flow.unique = None,
                Setting::Unique(Some(fields)) => {
                    let within = flow.unique.as_ref().and_then(|u| u.within);
                    flow.unique = Some(UniqueRule {
                        fields: fields.clone(),
                        within,
                    });
                }
                Setting::UniqueWithin(within) => {
                    if let Some(u) = flow.unique.as_mut() {
                        u.within = *within;
                    }
                }
            }
        }
    }
}

/// Parses `JOB_LIMITS`; the error says which part is wrong and why.
pub fn parse(raw: &str) -> Result<Vec<Override>, String> {
    let mut out = Vec::new();
    for entry in raw.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let (kind, settings) = entry
            .split_once(':')
            .ok_or_else(|| format!("{entry:?}: expected <kind>:<setting>=<value>,…"))?;
        let kind = kind.trim();
        if kind.is_empty() {
            return Err(format!("{entry:?}: no kind before ':'"));
        }
        let settings = settings
            .split(',')
            .map(|s| setting(s.trim()).map_err(|e| format!("{kind}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        out.push(Override {
            kind: kind.to_owned(),
            settings,
        });
    }
    Ok(out)
}

fn setting(s: &str) -> Result<Setting, String> {
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected <setting>=<value>"))?;
    let (name, value) = (name.trim(), value.trim());
    let named = |e: String| format!("{name}={value}: {e}");
    Ok(match name {
        "concurrency" => Setting::Concurrency(count(value).map_err(named)?),
        "concurrency_per_key" => Setting::ConcurrencyPerKey(count(value).map_err(named)?),
        "rate" => Setting::Rate(rate(value).map_err(named)?),
        "rate_per_key" => Setting::RatePerKey(rate(value).map_err(named)?),
        "unique" => Setting::Unique(unique(value).map_err(named)?),
        "unique_within" => Setting::UniqueWithin(
            shared::config::parse_span(value, true).map_err(|e| named(e.to_owned()))?,
        ),
        other => {
            return Err(format!(
                "unknown setting {other:?} (concurrency, concurrency_per_key, rate, rate_per_key, unique, unique_within)"
            ));
        }
    })
}

fn count(v: &str) -> Result<Option<u32>, String> {
    if v == "none" {
        return Ok(None);
    }
    match v.parse::<u32>() {
        Ok(n) if (1..=MAX_CONCURRENCY).contains(&n) => Ok(Some(n)),
        _ => Err(format!("expected 1 to {MAX_CONCURRENCY}, or none")),
    }
}

fn rate(v: &str) -> Result<Option<Rate>, String> {
    const FORM: &str = "expected <count>/<period> (e.g. 10/s, 1000/h, 5/10s), or none";
    if v == "none" {
        return Ok(None);
    }
    let (n, period) = v.split_once('/').ok_or(FORM)?;
    let count: u32 = n.trim().parse().map_err(|_| FORM.to_owned())?;
    if !(1..=MAX_RATE_COUNT).contains(&count) {
        return Err(format!("the count must be 1 to {MAX_RATE_COUNT}"));
    }
    let period = period.trim();
    let spelled = if period.starts_with(|c: char| c.is_ascii_digit()) {
        period.to_owned()
    } else {
        format!("1{period}")
    };
    let per = shared::config::parse_span(&spelled, false)
        .map_err(|_| FORM.to_owned())?
        .ok_or(FORM)?;
    Ok(Some(Rate { count, per }))
}

fn unique(v: &str) -> Result<Option<Vec<String>>, String> {
    match v {
        "none" => Ok(None),
        "payload" => Ok(Some(Vec::new())),
        fields => {
            let fields: Vec<String> = fields.split('+').map(|f| f.trim().to_owned()).collect();
            if fields.iter().any(|f| f.is_empty()) {
                return Err("expected payload, none, or field names joined by +".into());
            }
            Ok(Some(fields))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(raw: &str) -> KindFlow {
        let o = parse(raw).unwrap();
        let mut flow = KindFlow::default();
        o[0].apply(&mut flow);
        flow
    }

    #[test]
    fn reads_every_setting() {
        let f = one(
            "hash:concurrency=4,concurrency_per_key=1,rate=10/s,rate_per_key=1000/h,unique=a+b,unique_within=60s",
        );
        assert_eq!(f.limits.concurrency, Some(4));
        assert_eq!(f.limits.concurrency_per_key, Some(1));
        assert_eq!(f.limits.rate, Some(Rate::per_second(10)));
        assert_eq!(
            f.limits.rate_per_key,
            Some(Rate {
                count: 1000,
                per: Duration::from_secs(3600)
            })
        );
        let u = f.unique.unwrap();
        assert_eq!(u.fields, ["a", "b"]);
        assert_eq!(u.within, Some(Duration::from_secs(60)));
        assert_eq!(
            one("x:rate=5/10s").limits.rate,
            Some(Rate {
                count: 5,
                per: Duration::from_secs(10)
            })
        );
        assert_eq!(
            one("x:unique=payload").unique.unwrap().fields,
            Vec::<String>::new()
        );
    }

    #[test]
    fn none_removes_a_declared_limit() {
        let o = parse("x:concurrency=none,unique=none").unwrap();
        let mut flow = KindFlow::default();
        flow.limits.concurrency = Some(3);
        flow.unique = Some(UniqueRule {
            fields: vec![],
            within: None,
        });
        o[0].apply(&mut flow);
        assert_eq!(flow, KindFlow::default());
    }

    #[test]
    fn an_empty_value_means_no_override() {
        assert_eq!(parse("").unwrap(), vec![]);
        assert_eq!(parse(" ; ").unwrap(), vec![]);
    }

    #[test]
    fn bad_values_name_what_is_wrong() {
        for (raw, says) in [
            ("hash", "expected <kind>:"),
            (":concurrency=1", "no kind"),
            ("hash:concurrency", "expected <setting>=<value>"),
            ("hash:concurrency=0", "concurrency=0: expected 1 to"),
            ("hash:concurrency=-1", "concurrency=-1"),
            ("hash:rate=10", "rate=10: expected <count>/<period>"),
            ("hash:rate=0/s", "count must be"),
            ("hash:rate=10/fortnight", "rate=10/fortnight"),
            ("hash:unique=a++b", "unique=a++b"),
            ("hash:speed=3", "unknown setting \"speed\""),
            ("hash:unique_within=soon", "unique_within=soon"),
        ] {
            let e = parse(raw).unwrap_err();
            assert!(e.contains(says), "{raw}: {e}");
        }
    }
}
