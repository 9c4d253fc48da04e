//! The relay's decision for one batch of due outbox entries, made from what the store read
//! under the kinds' locks: publish each entry now, or hold it, and why. Pure, so every rule is
//! tested without a database; `store::flow` reads the state and writes the outcome.
//!
//! Per entry, in the batch's order (priority, then due time):
//! 1. its kind is paused: held until resumed;
//! 2. a concurrency limit (the kind's, or its key's) has no free slot: held until a slot frees;
//! 3. a rate limit (the kind's, or its key's) has no token now: a token is reserved for it at
//!    the earliest time both allow, and it is held until then (an entry already holding such a
//!    reservation skips this step);
//! 4. published, taking a slot if its kind counts them.
//!
//! Rates are GCRA: one job per `per / count` at the steady rate, with bursts of up to `count`
//! after a quiet period; the state is one timestamp per limit (its theoretical arrival time).

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use jobs_contract::flow::Rate;
use uuid::Uuid;

use super::Flow;

/// A due outbox entry, as the relay sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The job.
    pub id: Uuid,
    /// Its kind.
    pub kind: String,
    /// Its concurrency key (`""` without one).
    pub key: String,
    /// Whether its kind is paused.
    pub paused: bool,
    /// Whether it holds a rate reservation for now (it was held for `rate` until its run_at).
    pub reserved: bool,
    /// Whether it already holds a slot (an attempt handed back keeps its job's slot).
    pub has_slot: bool,
}

/// What to do with an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Publish it; `take_slot`: record a slot for it.
    Publish {
        /// Its kind counts slots and it holds none yet.
        take_slot: bool,
    },
    /// Its kind is paused.
    Paused,
    /// No free slot.
    Concurrency,
    /// A token is reserved for it at this time.
    Rate(DateTime<Utc>),
}

/// Slots in use and rate states, as read under the kinds' locks; updated as decisions are made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    /// Slots in use per kind.
    pub kind_slots: HashMap<String, u32>,
    /// Slots in use per (kind, key).
    pub key_slots: HashMap<(String, String), u32>,
    /// Theoretical arrival time per kind limit.
    pub kind_tat: HashMap<String, DateTime<Utc>>,
    /// Theoretical arrival time per (kind, key) limit.
    pub key_tat: HashMap<(String, String), DateTime<Utc>>,
}

/// Decides every candidate, in order, updating `state` with what the decisions take.
pub fn decide(
    candidates: &[Candidate],
    flow: &Flow,
    state: &mut State,
    now: DateTime<Utc>,
) -> Vec<Decision> {
    candidates
        .iter()
        .map(|c| decide_one(c, flow, state, now))
        .collect()
}

fn decide_one(c: &Candidate, flow: &Flow, state: &mut State, now: DateTime<Utc>) -> Decision {
    if c.paused {
        return Decision::Paused;
    }
    let limits = flow.limits(&c.kind);
    let pair = (c.kind.clone(), c.key.clone());
    let counts = limits.counts_slots() && !c.has_slot;
    if counts {
        let kind_used = state.kind_slots.get(&c.kind).copied().unwrap_or(0);
        let key_used = state.key_slots.get(&pair).copied().unwrap_or(0);
        let full = limits.concurrency.is_some_and(|n| kind_used >= n)
            || limits.concurrency_per_key.is_some_and(|n| key_used >= n);
        if full {
            return Decision::Concurrency;
        }
    }
    if limits.counts_rate() && !c.reserved {
        let kind_rate = limits
            .rate
            .map(|r| (r, state.kind_tat.get(&c.kind).copied()));
        let key_rate = limits
            .rate_per_key
            .map(|r| (r, state.key_tat.get(&pair).copied()));
        let at = [kind_rate, key_rate]
            .into_iter()
            .flatten()
            .map(|(rate, tat)| earliest(rate, tat, now))
            .fold(now, DateTime::max);
        if let Some((rate, tat)) = kind_rate {
            state
                .kind_tat
                .insert(c.kind.clone(), next_tat(rate, tat, at));
        }
        if let Some((rate, tat)) = key_rate {
            state.key_tat.insert(pair.clone(), next_tat(rate, tat, at));
        }
        if at > now {
            return Decision::Rate(at);
        }
    }
    if counts {
        *state.kind_slots.entry(c.kind.clone()).or_default() += 1;
        *state.key_slots.entry(pair).or_default() += 1;
    }
    Decision::Publish { take_slot: counts }
}

/// The earliest time `rate` allows one more job, given its theoretical arrival time.
fn earliest(rate: Rate, tat: Option<DateTime<Utc>>, now: DateTime<Utc>) -> DateTime<Utc> {
    let tolerance = to_chrono(rate.per) - to_chrono(rate.interval());
    tat.map_or(now, |tat| (tat - tolerance).max(now))
}

/// The theoretical arrival time after a job at `at`.
fn next_tat(rate: Rate, tat: Option<DateTime<Utc>>, at: DateTime<Utc>) -> DateTime<Utc> {
    tat.map_or(at, |tat| tat.max(at)) + to_chrono(rate.interval())
}

fn to_chrono(d: std::time::Duration) -> Duration {
    Duration::from_std(d).unwrap_or(Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::settings;

    fn flow(raw: &str) -> Flow {
        Flow::new(
            &jobs_contract::kinds::catalog(),
            &settings::parse(raw).unwrap(),
        )
        .unwrap()
    }

    fn job(kind: &str, key: &str) -> Candidate {
        Candidate {
            id: Uuid::now_v7(),
            kind: kind.into(),
            key: key.into(),
            paused: false,
            reserved: false,
            has_slot: false,
        }
    }

    fn now() -> DateTime<Utc> {
        "2026-12-06T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn without_limits_everything_is_published_and_nothing_counted() {
        let mut st = State::default();
        let d = decide(
            &[job("sleep", ""), job("hash", "a")],
            &flow(""),
            &mut st,
            now(),
        );
        assert_eq!(d, vec![Decision::Publish { take_slot: false }; 2]);
        assert_eq!(st, State::default());
    }

    #[test]
    fn a_paused_kind_is_held_whatever_its_limits() {
        let mut st = State::default();
        let mut c = job("sleep", "");
        c.paused = true;
        assert_eq!(
            decide(&[c], &flow(""), &mut st, now()),
            vec![Decision::Paused]
        );
    }

    #[test]
    fn a_kind_limit_admits_up_to_its_free_slots() {
        let mut st = State::default();
        st.kind_slots.insert("sleep".into(), 1);
        let batch = [job("sleep", "a"), job("sleep", "b"), job("hash", "a")];
        let d = decide(&batch, &flow("sleep:concurrency=2"), &mut st, now());
        assert_eq!(
            d,
            [
                Decision::Publish { take_slot: true },
                Decision::Concurrency,
                Decision::Publish { take_slot: false },
            ]
        );
        assert_eq!(st.kind_slots["sleep"], 2);
    }

    #[test]
    fn a_key_limit_holds_one_key_and_not_the_other() {
        let mut st = State::default();
        let batch = [job("sleep", "a"), job("sleep", "a"), job("sleep", "b")];
        let d = decide(&batch, &flow("sleep:concurrency_per_key=1"), &mut st, now());
        assert_eq!(
            d,
            [
                Decision::Publish { take_slot: true },
                Decision::Concurrency,
                Decision::Publish { take_slot: true },
            ]
        );
    }

    #[test]
    fn an_entry_that_holds_its_slot_takes_no_other() {
        let mut st = State::default();
        st.kind_slots.insert("sleep".into(), 1);
        let mut c = job("sleep", "");
        c.has_slot = true;
        let d = decide(&[c], &flow("sleep:concurrency=1"), &mut st, now());
        assert_eq!(d, [Decision::Publish { take_slot: false }]);
    }

    #[test]
    fn a_rate_allows_a_burst_then_reserves_evenly_spaced_turns() {
        let mut st = State::default();
        let batch: Vec<_> = (0..5).map(|_| job("sleep", "")).collect();
        let d = decide(&batch, &flow("sleep:rate=2/s"), &mut st, now());
        let ms = |n| now() + Duration::milliseconds(n);
        assert_eq!(
            d,
            [
                Decision::Publish { take_slot: false },
                Decision::Publish { take_slot: false },
                Decision::Rate(ms(500)),
                Decision::Rate(ms(1000)),
                Decision::Rate(ms(1500)),
            ]
        );
        // The reserved turns are spent: the next job, a second later, waits behind them.
        let later = now() + Duration::seconds(1);
        let d = decide(&[job("sleep", "")], &flow("sleep:rate=2/s"), &mut st, later);
        assert_eq!(d, [Decision::Rate(ms(2000))]);
    }

    #[test]
    fn a_reserved_entry_is_not_charged_twice() {
        let mut st = State::default();
        st.kind_tat
            .insert("sleep".into(), now() + Duration::seconds(10));
        let mut c = job("sleep", "");
        c.reserved = true;
        let d = decide(&[c], &flow("sleep:rate=1/s"), &mut st, now());
        assert_eq!(d, [Decision::Publish { take_slot: false }]);
        assert_eq!(st.kind_tat["sleep"], now() + Duration::seconds(10));
    }

    #[test]
    fn key_rates_are_independent_and_the_kind_rate_binds_them_all() {
        let mut st = State::default();
        let batch = [job("sleep", "a"), job("sleep", "a"), job("sleep", "b")];
        let d = decide(&batch, &flow("sleep:rate_per_key=1/s"), &mut st, now());
        assert_eq!(
            d,
            [
                Decision::Publish { take_slot: false },
                Decision::Rate(now() + Duration::seconds(1)),
                Decision::Publish { take_slot: false },
            ]
        );
        let mut st = State::default();
        let d = decide(
            &batch,
            &flow("sleep:rate_per_key=10/s,rate=1/s"),
            &mut st,
            now(),
        );
        assert_eq!(d[0], Decision::Publish { take_slot: false });
        assert_eq!(d[1], Decision::Rate(now() + Duration::seconds(1)));
        assert_eq!(d[2], Decision::Rate(now() + Duration::seconds(2)));
    }

    #[test]
    fn a_full_concurrency_limit_holds_before_a_token_is_spent() {
        let mut st = State::default();
        st.kind_slots.insert("sleep".into(), 1);
        let d = decide(
            &[job("sleep", "")],
            &flow("sleep:concurrency=1,rate=1/s"),
            &mut st,
            now(),
        );
        assert_eq!(d, [Decision::Concurrency]);
        assert!(st.kind_tat.is_empty(), "no token taken");
    }
}
