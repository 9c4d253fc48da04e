//! API keys. A key is `jsk_` and 64 hex digits (256 random bits), shown once when it is made;
//! the database keeps its SHA-256 digest. A slow password hash buys nothing for a secret of that
//! entropy, and a digest lets a request find its key with one index probe. Verified keys are
//! cached for [`CACHE_FOR`], so a request does not pay a query; a revoke clears this replica's
//! cache at once and the others' within that time.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::Utc;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use super::{Caller, Refused};
use crate::store;

/// How long a verified key is trusted without asking the database again.
pub const CACHE_FOR: Duration = Duration::from_secs(5);

/// Cached keys beyond this are dropped all at once (a bound, not an eviction policy: the
/// cache only saves queries).
const CACHE_MAX: usize = 10_000;

/// Every key starts with this, so a scanner (or a person) can tell one from other secrets.
pub const PREFIX: &str = "jsk_";

/// A new random secret.
pub fn generate() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{PREFIX}{hex}")
}

/// Whether `secret` has a key's shape (checked before any query, so garbage costs nothing).
pub fn well_formed(secret: &str) -> bool {
    secret.len() == PREFIX.len() + 64
        && secret.starts_with(PREFIX)
        && secret[PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// Whether `name` may name a key's client (the database's check, before the database).
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The digest stored for `secret`.
pub fn digest(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// What a key shows of itself in lists: its first characters.
pub fn hint(secret: &str) -> String {
    secret.chars().take(PREFIX.len() + 6).collect()
}

/// A key verified lately.
#[derive(Debug)]
struct Verified {
    caller: Caller,
    expires_at: Option<chrono::DateTime<Utc>>,
    at: Instant,
}

/// The keys, and the ones verified lately (by digest).
#[derive(Debug)]
pub struct Keys {
    db: PgPool,
    cache: Mutex<HashMap<Vec<u8>, Verified>>,
}

impl Keys {
    /// Keys stored in `db`.
    pub fn new(db: PgPool) -> Self {
        Self {
            db,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The caller `secret` names: 401 if it is malformed, unknown, revoked or expired.
    pub async fn verify(&self, secret: &str) -> Result<Caller, Refused> {
        const BAD: &str = "the API key is not valid (unknown, revoked or expired)";
        if !well_formed(secret) {
            return Err(Refused::Unauthenticated(BAD));
        }
        let digest = digest(secret);
        let now = Instant::now();
        if let Some(v) = self.cache.lock().expect("not poisoned").get(&digest)
            && now.duration_since(v.at) < CACHE_FOR
            && v.expires_at.is_none_or(|e| e > Utc::now())
        {
            return Ok(v.caller.clone());
        }
        let key = store::keys::active(&self.db, &digest)
            .await
            .map_err(Refused::Unavailable)?
            .ok_or(Refused::Unauthenticated(BAD))?;
        let caller = key.caller();
        let mut cache = self.cache.lock().expect("not poisoned");
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(
            digest,
            Verified {
                caller: caller.clone(),
                expires_at: key.expires_at,
                at: now,
            },
        );
        Ok(caller)
    }

    /// Forgets every cached key (after a revoke).
    pub fn forget(&self) {
        self.cache.lock().expect("not poisoned").clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_is_well_formed_and_unique_and_its_hint_is_short() {
        let (a, b) = (generate(), generate());
        assert!(well_formed(&a), "{a}");
        assert_ne!(a, b);
        assert_eq!(hint(&a).len(), 10);
        assert!(a.starts_with(&hint(&a)));
        assert_eq!(digest(&a).len(), 32);
    }

    #[test]
    fn malformed_keys_are_refused_without_a_query() {
        let good = generate();
        for bad in [
            String::new(),
            "jsk_".into(),
            good[..good.len() - 1].to_owned(),
            format!("{good}0"),
            good.replace("jsk_", "jsx_"),
            good.to_uppercase(),
            format!("jsk_{}", "g".repeat(64)),
        ] {
            assert!(!well_formed(&bad), "{bad:?}");
        }
    }
}
