//! The `Idempotency-Key` request header (IETF draft-ietf-httpapi-idempotency-key-header): how it
//! is read, and the fingerprint that tells a retry of a request from a different request.

use axum::http::HeaderMap;
use jobs_contract::JobRequest;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// The header's name.
pub const HEADER: &str = "idempotency-key";

/// The longest key accepted.
const MAX_LEN: usize = 255;

/// The key of a request, if it sent one; `Err` says what is wrong with it.
///
/// The draft defines the value as a Structured Field String (RFC 8941 §3.3.3: in double quotes,
/// printable ASCII, `\"` and `\\` escaped). Many clients send the bare value (Stripe's form), so
/// a bare token of printable ASCII without spaces, quotes or backslashes is taken as well.
pub fn key(headers: &HeaderMap) -> Result<Option<String>, String> {
    let mut values = headers.get_all(HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err("more than one Idempotency-Key header".into());
    }
    let raw = value
        .to_str()
        .map_err(|_| "Idempotency-Key must be printable ASCII".to_owned())?
        .trim_matches(' ');
    let key = match raw.strip_prefix('"') {
        Some(quoted) => sf_string(quoted)?,
        None if raw
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\') =>
        {
            raw.to_owned()
        }
        None => {
            return Err(
                "Idempotency-Key must be a quoted string (\"...\") or printable ASCII without \
                 spaces"
                    .into(),
            );
        }
    };
    if key.is_empty() || key.len() > MAX_LEN {
        return Err(format!("Idempotency-Key must be 1 to {MAX_LEN} characters"));
    }
    Ok(Some(key))
}

/// The rest of an RFC 8941 String after its opening quote.
fn sf_string(rest: &str) -> Result<String, String> {
    let bad = || "Idempotency-Key is not a valid quoted string".to_owned();
    let mut out = String::new();
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                return if chars.next().is_none() {
                    Ok(out)
                } else {
                    Err(bad())
                };
            }
            '\\' => match chars.next() {
                Some(e @ ('"' | '\\')) => out.push(e),
                _ => return Err(bad()),
            },
            ' '..='~' => out.push(c),
            _ => return Err(bad()),
        }
    }
    Err(bad())
}

/// The key as stored: `<client>/<key>`. A client name has no `/`, so two clients' keys never
/// meet, whatever they contain.
pub fn scoped(client: &str, key: &str) -> String {
    format!("{client}/{key}")
}

/// A digest of what the request asks for: the same job in a different key order or spacing
/// has the same fingerprint.
pub fn fingerprint(request: &JobRequest) -> String {
    let value = serde_json::to_value(request).expect("requests serialize");
    let canonical = serde_json::to_vec(&sorted(value)).expect("values serialize");
    format!("{:x}", Sha256::digest(&canonical))
}

/// `value` with every object's keys in order (serde_json here preserves insertion order).
pub(crate) fn sorted(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use serde_json::json;

    fn read(values: &[&[u8]]) -> Result<Option<String>, String> {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(HEADER, HeaderValue::from_bytes(v).unwrap());
        }
        key(&h)
    }

    #[test]
    fn reads_the_structured_string_and_the_bare_form() {
        assert_eq!(read(&[]), Ok(None));
        assert_eq!(
            read(&[b"\"8e03978e-40d5\""]),
            Ok(Some("8e03978e-40d5".into()))
        );
        assert_eq!(read(&[br#""a \"b\" \\c""#]), Ok(Some(r#"a "b" \c"#.into())));
        assert_eq!(read(&[b"order-42"]), Ok(Some("order-42".into())));
    }

    #[test]
    fn refuses_malformed_keys() {
        for bad in [
            &b"\"\""[..],
            b"\"open",
            b"\"a\"b",
            b"\"a\\n\"",
            b"two words",
            b"caf\xc3\xa9",
            b"back\\slash",
        ] {
            assert!(read(&[bad]).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(read(&[&[b'k'; 256]]).is_err(), "too long");
        assert!(read(&[b"a", b"b"]).is_err(), "two headers");
    }

    #[test]
    fn fingerprint_ignores_key_order_not_content() {
        let a: JobRequest = serde_json::from_value(
            json!({"kind": "k", "payload": {"x": 1, "y": [1, {"b": 2, "a": 1}]}}),
        )
        .unwrap();
        let b: JobRequest = serde_json::from_str(
            r#"{"payload": {"y": [1, {"a": 1, "b": 2}], "x": 1}, "kind": "k"}"#,
        )
        .unwrap();
        assert_eq!(fingerprint(&a), fingerprint(&b));
        let mut c = a.clone();
        c.delay_ms = Some(1);
        assert_ne!(fingerprint(&a), fingerprint(&c));
    }
}
