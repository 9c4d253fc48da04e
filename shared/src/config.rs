//! Environment-variable helpers: every service builds its `Config` from these, so a bad value
//! always stops start-up with one line that names the variable.

use std::fmt::Display;
use std::str::FromStr;
use std::time::Duration;

/// A setting that could not be used; its `Display` is the one line `main` prints.
#[derive(Debug, thiserror::Error)]
#[error("invalid {var}={value:?}: {reason}")]
pub struct ConfigError {
    /// The environment variable at fault.
    pub var: &'static str,
    /// The value found.
    pub value: String,
    /// Why it was refused.
    pub reason: String,
}

/// The variable's value, or `default` when it is unset or empty.
pub fn string(var: &'static str, default: &str) -> String {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => v,
        _ => default.to_owned(),
    }
}

/// An `amqp://` URL (the password is redacted in the error), or `default` when unset or empty.
pub fn amqp_url(var: &'static str, default: &str) -> Result<String, ConfigError> {
    let url = string(var, default);
    let refuse = |reason: String| ConfigError {
        var,
        value: redact_url(&url),
        reason,
    };
    let uri: lapin::uri::AMQPUri = url.parse().map_err(refuse)?;
    if uri.scheme != lapin::uri::AMQPScheme::AMQP {
        return Err(refuse(
            "expected an amqp:// URL (this build has no TLS for amqps://)".into(),
        ));
    }
    Ok(url)
}

/// The variable parsed as `T`, or `default` when it is unset or empty.
pub fn parse<T>(var: &'static str, default: T) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: Display,
{
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().map_err(|e: T::Err| ConfigError {
            var,
            value: v.clone(),
            reason: e.to_string(),
        }),
        _ => Ok(default),
    }
}

/// Like [`parse`], then checked against an inclusive range.
pub fn ranged<T>(var: &'static str, default: T, min: T, max: T) -> Result<T, ConfigError>
where
    T: FromStr + PartialOrd + Display + Copy,
    T::Err: Display,
{
    let v = parse(var, default)?;
    if v < min || v > max {
        return Err(ConfigError {
            var,
            value: v.to_string(),
            reason: format!("must be between {min} and {max}"),
        });
    }
    Ok(v)
}

/// A whole number of seconds, at least 1.
pub fn seconds(var: &'static str, default: u64) -> Result<Duration, ConfigError> {
    ranged(var, default, 1, 86_400).map(Duration::from_secs)
}

/// A whole number of milliseconds.
pub fn millis(var: &'static str, default: u64, min: u64) -> Result<Duration, ConfigError> {
    ranged(var, default, min, 86_400_000).map(Duration::from_millis)
}

/// A span of time written `<n><unit>` with unit `s`, `m`, `h` or `d` (`90s`, `24h`, `7d`), or
/// `0`; `None` stands for zero when `zero_allowed`, which a caller reads as "never" or "off".
pub fn span(
    var: &'static str,
    default: &str,
    zero_allowed: bool,
) -> Result<Option<Duration>, ConfigError> {
    let raw = string(var, default);
    parse_span(&raw, zero_allowed).map_err(|reason| ConfigError {
        var,
        value: raw.clone(),
        reason: reason.to_owned(),
    })
}

fn parse_span(raw: &str, zero_allowed: bool) -> Result<Option<Duration>, &'static str> {
    const FORM: &str = "expected a number and a unit: s, m, h or d (e.g. 7d), or 0";
    let text = raw.trim();
    let secs = if text == "0" {
        0
    } else {
        let split = text.len() - text.chars().last().map_or(0, char::len_utf8);
        let (number, unit) = text.split_at(split);
        let scale = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => return Err(FORM),
        };
        let n: u64 = number.parse().map_err(|_| FORM)?;
        n.checked_mul(scale).ok_or("must be at most 3650d")?
    };
    match secs {
        0 if zero_allowed => Ok(None),
        0 => Err("must be more than 0"),
        s if s <= 3650 * 86_400 => Ok(Some(Duration::from_secs(s))),
        _ => Err("must be at most 3650d"),
    }
}

/// A socket address such as `0.0.0.0:8080`.
pub fn listen(var: &'static str, default: &str) -> Result<std::net::SocketAddr, ConfigError> {
    parse(var, default.parse().expect("default listen address parses"))
}

/// A URL with its password replaced by `***`, safe to log.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_password_only() {
        assert_eq!(
            redact_url("amqp://guest:secret@mq:5672/%2f"),
            "amqp://guest:***@mq:5672/%2f"
        );
        assert_eq!(redact_url("postgres://pg@db/x"), "postgres://pg@db/x");
        assert_eq!(redact_url("not a url"), "not a url");
        assert_eq!(
            redact_url("postgres://u:p@ss@db/x"),
            "postgres://u:***@db/x",
            "the last @ ends the user info"
        );
    }

    #[test]
    fn spans() {
        let d = |s| Some(Duration::from_secs(s));
        assert_eq!(parse_span("7d", true), Ok(d(7 * 86_400)));
        assert_eq!(parse_span("90s", true), Ok(d(90)));
        assert_eq!(parse_span(" 24h ", false), Ok(d(86_400)));
        assert_eq!(parse_span("15m", false), Ok(d(900)));
        assert_eq!(parse_span("0", true), Ok(None));
        assert_eq!(parse_span("0h", true), Ok(None));
        assert_eq!(parse_span("0", false), Err("must be more than 0"));
        for bad in ["7", "d", "7w", "-1d", "1.5h", "7 d", "99999d", "é", ""] {
            assert!(parse_span(bad, true).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn error_names_the_variable() {
        let e = ConfigError {
            var: "WORKER_CONCURRENCY",
            value: "abc".into(),
            reason: "invalid digit found in string".into(),
        };
        assert_eq!(
            e.to_string(),
            "invalid WORKER_CONCURRENCY=\"abc\": invalid digit found in string"
        );
    }
}
