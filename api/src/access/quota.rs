//! Per-client quotas at the edge, before any query: a submit rate (GCRA, from the `governor`
//! crate: lock-free, one atomic word per client, the algorithm the flow limits use in the
//! database) and a cap on requests in flight. Over either, 429 with `Retry-After`. Each client
//! has its own limiter, so one client flooding spends only its own tokens: another client's
//! accepts never wait behind them. Counted per replica: N replicas admit up to N times the rate
//! (the database-backed flow limits are the fleet-wide ones).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::Caller;
use crate::error::problem;

/// The defaults a key without its own quota gets (`CLIENT_SUBMIT_RATE`, `CLIENT_MAX_IN_FLIGHT`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Defaults {
    /// Submits per second; `None`: unlimited.
    pub submit_rate: Option<f64>,
    /// Requests at once; `None`: unlimited.
    pub max_in_flight: Option<u32>,
}

/// Why a request is over its client's quota.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Over {
    /// Submitting faster than the rate.
    #[error("client {client} is over its submit rate of {rate}/s; retry after {retry_after:?}")]
    Rate {
        /// The client.
        client: String,
        /// Its rate.
        rate: f64,
        /// When a token is next free.
        retry_after: Duration,
    },
    /// Too many requests at once.
    #[error("client {client} already has {cap} requests in flight")]
    InFlight {
        /// The client.
        client: String,
        /// Its cap.
        cap: u32,
    },
}

impl IntoResponse for Over {
    fn into_response(self) -> Response {
        // Whole seconds, rounded up (RFC 9110): never ask for a retry before a token is free.
        let secs = match &self {
            Over::Rate { retry_after, .. } => retry_after.as_secs_f64().ceil().max(1.0) as u64,
            Over::InFlight { .. } => 1,
        };
        metrics::counter!("jobstack_client_quota_refusals_total", "reason" => match &self {
            Over::Rate { .. } => "rate",
            Over::InFlight { .. } => "in_flight",
        })
        .increment(1);
        let mut res = problem(StatusCode::TOO_MANY_REQUESTS, self.to_string());
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        res
    }
}

/// One client's limiter and in-flight permits, made with the quota of the key first seen.
#[derive(Debug)]
struct Client {
    rate: Option<(f64, DefaultDirectRateLimiter)>,
    in_flight: Option<(u32, Arc<Semaphore>)>,
}

/// Every client's quota on this replica.
#[derive(Debug)]
pub struct Quotas {
    defaults: Defaults,
    clients: Mutex<HashMap<String, Arc<Client>>>,
}

/// Held while a request runs; its drop frees the client's in-flight slot.
#[derive(Debug)]
pub struct Permit(#[allow(dead_code)] Option<OwnedSemaphorePermit>);

impl Quotas {
    /// Quotas with these defaults.
    pub fn new(defaults: Defaults) -> Self {
        Self {
            defaults,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// Takes an in-flight slot for `caller`, and a submit token if the request `submits`.
    pub fn take(&self, caller: &Caller, submits: bool) -> Result<Permit, Over> {
        let client = self.client(caller);
        let permit = match &client.in_flight {
            None => None,
            Some((cap, slots)) => {
                Some(
                    slots
                        .clone()
                        .try_acquire_owned()
                        .map_err(|_| Over::InFlight {
                            client: caller.client.clone(),
                            cap: *cap,
                        })?,
                )
            }
        };
        if submits && let Some((rate, limiter)) = &client.rate {
            limiter.check().map_err(|not_until| Over::Rate {
                client: caller.client.clone(),
                rate: *rate,
                retry_after: not_until.wait_time_from(limiter.clock().now()),
            })?;
        }
        Ok(Permit(permit))
    }

    fn client(&self, caller: &Caller) -> Arc<Client> {
        let mut clients = self.clients.lock().expect("not poisoned");
        if let Some(c) = clients.get(&caller.client) {
            return c.clone();
        }
        let rate = caller.submit_rate.or(self.defaults.submit_rate);
        let cap = caller.max_in_flight.or(self.defaults.max_in_flight);
        let client = Arc::new(Client {
            rate: rate.map(|r| (r, RateLimiter::direct(quota(r)))),
            in_flight: cap.map(|c| (c, Arc::new(Semaphore::new(c as usize)))),
        });
        clients.insert(caller.client.clone(), client.clone());
        client
    }

    /// Forgets every client's limiter (after a key changes, so its new quota applies).
    pub fn forget(&self) {
        self.clients.lock().expect("not poisoned").clear();
    }
}

/// `rate` per second, with a burst of one second's worth (at least one). A rate is at least
/// 0.001/s (the key and config checks); anything slower is read as that, never as a panic.
fn quota(rate: f64) -> Quota {
    let period =
        Duration::try_from_secs_f64(1.0 / rate.max(0.001)).unwrap_or(Duration::from_secs(1000));
    let burst =
        NonZeroU32::new(rate.ceil().clamp(1.0, f64::from(u32::MAX)) as u32).expect("at least one");
    Quota::with_period(period)
        .expect("a positive rate has a positive period")
        .allow_burst(burst)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::Role;

    fn caller(name: &str, rate: Option<f64>, cap: Option<u32>) -> Caller {
        Caller {
            key_id: None,
            client: name.into(),
            role: Role::Submitter,
            submit_rate: rate,
            max_in_flight: cap,
        }
    }

    #[test]
    fn a_client_over_its_rate_is_refused_with_a_retry_time_and_others_are_not() {
        let q = Quotas::new(Defaults {
            submit_rate: Some(5.0),
            max_in_flight: None,
        });
        let a = caller("a", None, None);
        for _ in 0..5 {
            q.take(&a, true).expect("within the burst");
        }
        match q.take(&a, true) {
            Err(Over::Rate { retry_after, .. }) => {
                assert!(retry_after <= Duration::from_millis(200), "{retry_after:?}")
            }
            other => panic!("{other:?}"),
        }
        // Reads are not submits; another client has its own tokens.
        q.take(&a, false).expect("reads are not rate-limited");
        q.take(&caller("b", None, None), true)
            .expect("b has its own");
    }

    #[test]
    fn the_smallest_rates_make_a_quota_and_never_a_panic() {
        for rate in [5e-324, 0.0, 0.001, 1e6] {
            let _ = quota(rate);
        }
    }

    #[test]
    fn the_in_flight_cap_frees_a_slot_when_a_request_ends_and_a_key_may_override() {
        let q = Quotas::new(Defaults {
            submit_rate: None,
            max_in_flight: Some(2),
        });
        let a = caller("a", None, None);
        let first = q.take(&a, false).unwrap();
        let _second = q.take(&a, false).unwrap();
        assert!(matches!(
            q.take(&a, false),
            Err(Over::InFlight { cap: 2, .. })
        ));
        drop(first);
        q.take(&a, false).expect("a slot came back");
        let big = caller("big", Some(1000.0), Some(3));
        let held: Vec<_> = (0..3).map(|_| q.take(&big, true).unwrap()).collect();
        assert!(q.take(&big, true).is_err());
        drop(held);
    }
}
