//! The weighted job mix (`sleep=70,hash=20,fail=10`) and the request bodies it generates.

use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;

use serde_json::{Value, json};

/// The job contract's kinds, built once: other kinds get their example payload.
static CATALOG: LazyLock<jobs_contract::Catalog> = LazyLock::new(jobs_contract::kinds::catalog);

/// A weighted choice of job kinds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mix {
    entries: Vec<(String, u32)>,
    total: u32,
}

impl Mix {
    /// Picks a kind; `roll` is any random number.
    pub fn pick(&self, roll: u64) -> &str {
        let mut r = (roll % u64::from(self.total)) as u32;
        for (kind, weight) in &self.entries {
            if r < *weight {
                return kind;
            }
            r -= weight;
        }
        unreachable!("weights sum to total")
    }

    /// The kinds and their weights, in the order given.
    pub fn entries(&self) -> &[(String, u32)] {
        &self.entries
    }
}

impl FromStr for Mix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut entries: Vec<(String, u32)> = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (kind, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}` is not kind=weight"))?;
            let valid = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-".contains(c);
            if kind.is_empty() || !kind.chars().all(valid) {
                return Err(format!("`{kind}` is not a job kind (a-z, 0-9, _ and -)"));
            }
            let weight: u32 = weight
                .parse()
                .map_err(|_| format!("weight `{weight}` of {kind} is not a whole number"))?;
            if entries.iter().any(|(k, _)| k == kind) {
                return Err(format!("{kind} appears twice"));
            }
            if weight > 0 {
                entries.push((kind.to_owned(), weight));
            }
        }
        let total = entries.iter().try_fold(0u32, |t, (_, w)| t.checked_add(*w));
        match total {
            Some(total) if total > 0 => Ok(Self { entries, total }),
            Some(_) => Err("the mix needs at least one kind with a weight above 0".into()),
            None => Err("the weights are too large".into()),
        }
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .entries
            .iter()
            .map(|(k, w)| format!("{k}={w}"))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// An inclusive integer range, written `N` or `A..B`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// Lowest value.
    pub lo: u64,
    /// Highest value (inclusive).
    pub hi: u64,
}

impl Range {
    /// A value in the range.
    pub fn pick(&self, roll: u64) -> u64 {
        self.lo + roll % (self.hi - self.lo + 1)
    }
}

impl FromStr for Range {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let num = |x: &str| {
            x.trim()
                .parse::<u64>()
                .map_err(|_| format!("`{s}` is not N or A..B"))
        };
        let (lo, hi) = match s.split_once("..") {
            Some((a, b)) => (num(a)?, num(b.trim_start_matches('='))?),
            None => (num(s)?, num(s)?),
        };
        if lo > hi || hi == u64::MAX {
            return Err(format!("`{s}`: the range is empty or too large"));
        }
        Ok(Self { lo, hi })
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..{}", self.lo, self.hi)
    }
}

/// Payload ranges for the kinds the worker ships.
#[derive(Debug, Clone, Copy)]
pub struct Payloads {
    /// sleep: `duration_ms`.
    pub sleep_ms: Range,
    /// sleep: `steps`.
    pub sleep_steps: Range,
    /// hash: `rounds`.
    pub hash_rounds: Range,
    /// fail: share of transient failures, in percent.
    pub fail_transient_pct: u8,
    /// Flow-control fields every request carries.
    pub flow: FlowFields,
}

/// What a request says about flow control (none by default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowFields {
    /// `priority`, drawn from this range.
    pub priority: Option<Range>,
    /// `concurrency_key` = `k<n>` with `n` drawn below this (0: no key).
    pub keys: u64,
    /// A distinct `unique_key` on every request.
    pub unique: bool,
}

impl Payloads {
    /// Checks the ranges against the api's documented limits, so a typo fails here and not as
    /// a wall of 422s.
    pub fn validate(&self) -> Result<(), String> {
        let within = |name: &str, r: Range, lo: u64, hi: u64| {
            if r.lo < lo || r.hi > hi {
                Err(format!(
                    "--{name} {r} is outside the api's limits {lo}..{hi}"
                ))
            } else {
                Ok(())
            }
        };
        within("sleep-ms", self.sleep_ms, 0, 300_000)?;
        within("sleep-steps", self.sleep_steps, 1, 100)?;
        within("hash-rounds", self.hash_rounds, 1, 10_000_000)?;
        if let Some(p) = self.flow.priority {
            within("priority", p, 0, 9)?;
        }
        Ok(())
    }

    /// The `POST /jobs` body for one job of `kind`.
    pub fn body(&self, kind: &str, rng: &mut Rng) -> Value {
        let payload = match kind {
            "sleep" => json!({
                "duration_ms": self.sleep_ms.pick(rng.next_u64()),
                "steps": self.sleep_steps.pick(rng.next_u64()),
            }),
            "hash" => json!({ "rounds": self.hash_rounds.pick(rng.next_u64()) }),
            "fail" => {
                json!({ "transient": rng.next_u64() % 100 < u64::from(self.fail_transient_pct) })
            }
            // Any other kind of the contract: its example payload.
            other => CATALOG.example(other).unwrap_or_else(|| json!({})),
        };
        let mut body = json!({ "kind": kind, "payload": payload });
        if let Some(range) = self.flow.priority {
            body["priority"] = json!(range.pick(rng.next_u64()));
        }
        if self.flow.keys > 0 {
            body["concurrency_key"] = json!(format!("k{}", rng.next_u64() % self.flow.keys));
        }
        if self.flow.unique {
            body["unique_key"] = json!(format!("{:016x}{:016x}", rng.next_u64(), rng.next_u64()));
        }
        body
    }
}

/// SplitMix64: a tiny, fast, seedable generator; plenty for choosing job kinds.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next pseudo-random number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_weights_and_refuses_nonsense() {
        let mix: Mix = "sleep=70, hash=20,fail=10".parse().unwrap();
        assert_eq!(mix.to_string(), "sleep=70,hash=20,fail=10");
        assert!("sleep".parse::<Mix>().unwrap_err().contains("kind=weight"));
        assert!(
            "sleep=x"
                .parse::<Mix>()
                .unwrap_err()
                .contains("whole number")
        );
        assert!(
            "sleep=1,sleep=2"
                .parse::<Mix>()
                .unwrap_err()
                .contains("twice")
        );
        assert!(
            "sleep=0"
                .parse::<Mix>()
                .unwrap_err()
                .contains("at least one")
        );
        assert!("Sleep=1".parse::<Mix>().is_err());
        assert!("".parse::<Mix>().is_err());
    }

    #[test]
    fn picks_follow_the_weights() {
        let mix: Mix = "sleep=70,hash=20,fail=10".parse().unwrap();
        let mut rng = Rng::new(7);
        let mut counts = std::collections::HashMap::new();
        for _ in 0..100_000 {
            *counts.entry(mix.pick(rng.next_u64())).or_insert(0u32) += 1;
        }
        for (kind, share) in [("sleep", 0.70), ("hash", 0.20), ("fail", 0.10)] {
            let got = f64::from(counts[kind]) / 100_000.0;
            assert!((got - share).abs() < 0.01, "{kind}: {got}");
        }
        // Exact boundaries: the first 70 rolls of every 100 are sleep, then 20 hash, 10 fail.
        assert_eq!(mix.pick(69), "sleep");
        assert_eq!(mix.pick(70), "hash");
        assert_eq!(mix.pick(99), "fail");
    }

    #[test]
    fn ranges_and_bodies() {
        assert_eq!("5".parse::<Range>(), Ok(Range { lo: 5, hi: 5 }));
        assert_eq!("1..=3".parse::<Range>(), Ok(Range { lo: 1, hi: 3 }));
        assert!("3..1".parse::<Range>().is_err());
        let p = Payloads {
            sleep_ms: "0".parse().unwrap(),
            sleep_steps: "1".parse().unwrap(),
            hash_rounds: "10..20".parse().unwrap(),
            fail_transient_pct: 100,
            flow: FlowFields::default(),
        };
        let mut rng = Rng::new(1);
        let sleep = p.body("sleep", &mut rng);
        assert_eq!(
            sleep,
            json!({"kind": "sleep", "payload": {"duration_ms": 0, "steps": 1}})
        );
        assert_eq!(p.body("fail", &mut rng)["payload"]["transient"], true);
        let rounds = p.body("hash", &mut rng)["payload"]["rounds"]
            .as_u64()
            .unwrap();
        assert!((10..=20).contains(&rounds));
        assert!(
            Payloads {
                sleep_steps: Range { lo: 0, hi: 1 },
                ..p
            }
            .validate()
            .is_err()
        );
        let flow = Payloads {
            flow: FlowFields {
                priority: Some(Range { lo: 9, hi: 9 }),
                keys: 1,
                unique: true,
            },
            ..p
        };
        let a = flow.body("sleep", &mut rng);
        let b = flow.body("sleep", &mut rng);
        assert_eq!(
            (&a["priority"], &a["concurrency_key"]),
            (&json!(9), &json!("k0"))
        );
        assert_ne!(a["unique_key"], b["unique_key"]);
    }
}
