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

/// The variable's value, if it is set and not blank.
fn read(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.trim().is_empty())
}

/// The variable's value, or `default` when it is unset or empty.
pub fn string(var: &'static str, default: &str) -> String {
    read(var).unwrap_or_else(|| default.to_owned())
}

/// An `amqp://` or `amqps://` URL (the password is redacted in the error), or `default` when
/// unset or empty.
pub fn amqp_url(var: &'static str, default: &str) -> Result<String, ConfigError> {
    check_amqp_url(var, string(var, default))
}

fn check_amqp_url(var: &'static str, url: String) -> Result<String, ConfigError> {
    // The two schemes lapin speaks; checked first so the reason names them.
    if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
        return Err(ConfigError {
            var,
            value: redact_url(&url),
            reason: "expected an amqp:// or amqps:// URL".into(),
        });
    }
    url.parse::<lapin::uri::AMQPUri>()
        .map_err(|reason| ConfigError {
            var,
            value: redact_url(&url),
            reason,
        })?;
    Ok(url)
}

/// The PEM certificates in the file the variable names (a CA bundle to trust), or `None` when it
/// is unset or empty. A file that cannot be read or holds no certificate stops start-up here,
/// rather than as a handshake failure retried for ever.
pub fn pem_certificates(var: &'static str) -> Result<Option<String>, ConfigError> {
    read(var).map(|path| check_pem(var, path)).transpose()
}

fn check_pem(var: &'static str, path: String) -> Result<String, ConfigError> {
    let refuse = |reason: String| ConfigError {
        var,
        value: path.clone(),
        reason,
    };
    let pem = std::fs::read_to_string(&path).map_err(|e| refuse(e.to_string()))?;
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(refuse("holds no PEM certificate".into()));
    }
    Ok(pem)
}

/// The variable parsed as `T`, or `default` when it is unset or empty.
pub fn parse<T>(var: &'static str, default: T) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: Display,
{
    parse_value(var, read(var), default)
}

fn parse_value<T>(var: &'static str, raw: Option<String>, default: T) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: Display,
{
    match raw {
        Some(v) => v.trim().parse().map_err(|e: T::Err| ConfigError {
            var,
            value: v.clone(),
            reason: e.to_string(),
        }),
        None => Ok(default),
    }
}

/// Like [`parse`], then checked against an inclusive range.
pub fn ranged<T>(var: &'static str, default: T, min: T, max: T) -> Result<T, ConfigError>
where
    T: FromStr + PartialOrd + Display + Copy,
    T::Err: Display,
{
    ranged_value(var, read(var), default, min, max)
}

fn ranged_value<T>(
    var: &'static str,
    raw: Option<String>,
    default: T,
    min: T,
    max: T,
) -> Result<T, ConfigError>
where
    T: FromStr + PartialOrd + Display + Copy,
    T::Err: Display,
{
    let v = parse_value(var, raw, default)?;
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

/// A span as [`span`] reads it, from a string: `<n><unit>` or `0` (`None` when zero is allowed).
pub fn parse_span(raw: &str, zero_allowed: bool) -> Result<Option<Duration>, &'static str> {
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

    /// The one line a bad setting prints: the variable, its value and what is wrong.
    fn line<T: std::fmt::Debug>(r: Result<T, ConfigError>) -> String {
        r.expect_err("refused").to_string()
    }

    #[test]
    fn a_bad_value_is_refused_with_a_line_naming_the_variable_its_value_and_why() {
        let some = |v: &str| Some(v.to_owned());
        assert_eq!(
            parse_value("PORTS", None, 7u16).unwrap(),
            7,
            "unset: default"
        );
        assert_eq!(parse_value("PORTS", some(" 9 "), 7u16).unwrap(), 9);
        assert_eq!(
            line(parse_value("PORTS", some("abc"), 7u16)),
            "invalid PORTS=\"abc\": invalid digit found in string"
        );
        assert_eq!(ranged_value("N", some("5"), 1u16, 1, 10).unwrap(), 5);
        assert_eq!(
            ranged_value("N", some("1"), 5u16, 1, 10).unwrap(),
            1,
            "min is in"
        );
        assert_eq!(
            ranged_value("N", some("10"), 5u16, 1, 10).unwrap(),
            10,
            "max is in"
        );
        assert_eq!(
            line(ranged_value("N", some("0"), 5u16, 1, 10)),
            "invalid N=\"0\": must be between 1 and 10"
        );
        assert_eq!(
            line(ranged_value("N", some("11"), 5u16, 1, 10)),
            "invalid N=\"11\": must be between 1 and 10"
        );
    }

    #[test]
    fn a_bad_broker_url_is_refused_without_its_password() {
        let url = |u: &str| check_amqp_url("AMQP_URL", u.to_owned());
        assert!(url("amqp://guest:guest@127.0.0.1:5672/%2f").is_ok());
        assert!(url("amqps://user:s3cret@mq.example/%2f").is_ok());
        for bad in [
            "http://user:s3cret@mq:5672",
            "amqp://user:s3cret@mq:notaport",
            "amqps://user:s3cret@mq:notaport",
        ] {
            let line = line(url(bad));
            assert!(line.starts_with("invalid AMQP_URL="), "{line}");
            assert!(!line.contains("s3cret"), "the password is redacted: {line}");
            assert!(line.contains("user:***@mq"), "{line}");
        }
    }

    #[test]
    fn a_ca_file_must_hold_a_certificate() {
        let dir = std::env::temp_dir().join(format!("jobstack-pem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (good, bad) = (dir.join("ca.crt"), dir.join("key.pem"));
        std::fs::write(
            &good,
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        std::fs::write(
            &bad,
            "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let check = |p: &std::path::Path| check_pem("AMQP_CA_FILE", p.display().to_string());
        assert!(check(&good).unwrap().contains("BEGIN CERTIFICATE"));
        let no_cert = line(check(&bad));
        assert!(no_cert.ends_with("holds no PEM certificate"), "{no_cert}");
        let missing = line(check(&dir.join("absent.crt")));
        assert!(missing.starts_with("invalid AMQP_CA_FILE="), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
