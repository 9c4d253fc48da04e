//! JSON request bodies read as the OpenAPI document reads them.
//!
//! The document types counts as JSON Schema `integer`, which is a number with a zero fraction
//! however it is written: `7`, `7.0` and `7e0` are all valid. serde refuses `7.0` for a `u32`,
//! and a payload stored as `7.0` would fail in the worker's handler; so a body's integral
//! numbers are made integers before it is read, and the job is stored that way.

use axum::Json;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;
use serde_json::{Number, Value};

use crate::error::ApiError;
use jobs_contract::strict::Strict;

/// A JSON body of type `T`, its integral numbers read as integers.
pub(crate) struct Body<T>(pub(crate) T);

/// What a body is, for its error messages (`invalid job: ...`).
pub(crate) trait Named {
    /// A noun.
    const WHAT: &'static str;
}

impl<S: Send + Sync, T: DeserializeOwned + Named> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let Json(mut value) = Json::<Value>::from_request(req, state).await?;
        integral(&mut value);
        // With the path, as axum's `Json` says it: `run_at: input contains invalid characters`.
        // Strict: a struct only from an object, as the document says (serde alone also reads
        // one from an array of its fields).
        serde_path_to_error::deserialize(Strict(&value))
            .map(Body)
            .map_err(|e| ApiError::Unprocessable(format!("invalid {}: {e}", T::WHAT)))
    }
}

/// Rewrites every number of `value` that has a zero fraction and fits an `i64` or a `u64` as
/// that integer; any other number is left as it is, for the schema to refuse.
fn integral(value: &mut Value) {
    match value {
        Value::Number(n) if n.is_f64() => {
            // 2^63 and 2^64 are exact in f64; every integral f64 below them converts exactly.
            const I64_END: f64 = 9_223_372_036_854_775_808.0;
            const U64_END: f64 = 18_446_744_073_709_551_616.0;
            let f = n.as_f64().unwrap_or(f64::NAN);
            if f.fract() != 0.0 {
                return;
            }
            if (-I64_END..I64_END).contains(&f) {
                *n = Number::from(f as i64);
            } else if (0.0..U64_END).contains(&f) {
                *n = Number::from(f as u64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral),
        Value::Object(map) => map.values_mut().for_each(integral),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read(text: &str) -> Value {
        let mut v: Value = serde_json::from_str(text).unwrap();
        integral(&mut v);
        v
    }

    #[test]
    fn integral_numbers_become_integers_wherever_they_are() {
        assert_eq!(
            read(r#"{"a": 7.0, "b": [1e2, -0.0, -3.0], "c": {"d": 18446744073709549568.0}}"#),
            json!({"a": 7, "b": [100, 0, -3], "c": {"d": 18_446_744_073_709_549_568_u64}})
        );
        assert!(read("7.0").is_u64());
    }

    #[test]
    fn other_numbers_stay_as_they_are() {
        assert_eq!(read("[7.5, 1e300, -1e300]"), json!([7.5, 1e300, -1e300]));
        // Past u64: not an integer any field could hold; the schema refuses it.
        assert!(read("18446744073709551616").is_f64());
        assert_eq!(read(r#"[7, "7.0", true]"#), json!([7, "7.0", true]));
    }
}
