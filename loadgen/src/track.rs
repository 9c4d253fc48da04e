//! `--track`: follow each accepted job with `GET /jobs/{id}` until it ends, within bounds
//! (a cap on polls in flight and per second, a backoff between polls, a deadline after the load).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use hdrhistogram::Histogram;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::Api;
use crate::report::{Percentiles, TrackSummary};
use crate::stats::{histogram, record};

const FIRST_POLL: Duration = Duration::from_millis(100);
const MAX_POLL_GAP: Duration = Duration::from_secs(1);
const LOST_EXAMPLES: usize = 10;

/// Follows jobs; cheap to clone.
#[derive(Debug, Clone)]
pub struct Tracker {
    api: Api,
    polls: Arc<Semaphore>,
    /// The next free poll slot: polls are spaced `gap` apart across all jobs.
    next_slot: Arc<Mutex<Instant>>,
    gap: Duration,
    tasks: TaskTracker,
    stop: CancellationToken,
    state: Arc<Mutex<State>>,
    /// The run's start on both clocks, to compare `finished_at` with a scheduled instant.
    start: (Instant, SystemTime),
}

#[derive(Debug)]
struct State {
    accepted: u64,
    ended: BTreeMap<String, u64>,
    lost: BTreeMap<String, u64>,
    lost_examples: Vec<String>,
    end_to_end: Histogram<u64>,
    polls: u64,
}

impl Tracker {
    /// A tracker polling `api` with at most `concurrency` requests in flight and `rate` per
    /// second.
    pub fn new(api: Api, concurrency: usize, rate: u32, start: Instant) -> Self {
        Self {
            api,
            polls: Arc::new(Semaphore::new(concurrency)),
            next_slot: Arc::new(Mutex::new(start)),
            gap: Duration::from_secs(1) / rate.max(1),
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
            state: Arc::new(Mutex::new(State {
                accepted: 0,
                ended: BTreeMap::new(),
                lost: BTreeMap::new(),
                lost_examples: Vec::new(),
                end_to_end: histogram(),
                polls: 0,
            })),
            start: (start, SystemTime::now() - start.elapsed()),
        }
    }

    /// Follows job `id`, whose request was due at `due`.
    pub fn follow(&self, id: String, due: Instant) {
        self.state.lock().expect("not poisoned").accepted += 1;
        let this = self.clone();
        self.tasks.spawn(async move {
            let last = this.poll_until_end(&id, due).await;
            if let Some(last) = last {
                let mut st = this.state.lock().expect("not poisoned");
                *st.lost.entry(last).or_default() += 1;
                if st.lost_examples.len() < LOST_EXAMPLES {
                    st.lost_examples.push(id);
                }
            }
        });
    }

    /// Polls until the job ends (`None`) or tracking stops (`Some(last state seen)`).
    async fn poll_until_end(&self, id: &str, due: Instant) -> Option<String> {
        let mut gap = FIRST_POLL;
        let mut last = "unknown".to_owned();
        loop {
            let polled = tokio::select! {
                () = self.stop.cancelled() => return Some(last),
                polled = async {
                    tokio::time::sleep(gap).await;
                    tokio::time::sleep_until(self.reserve_slot()).await;
                    let _slot = self.polls.acquire().await.expect("never closed");
                    self.api.job(id).await
                } => polled,
            };
            self.state.lock().expect("not poisoned").polls += 1;
            match polled {
                Ok(Some(job))
                    if matches!(job.status.as_str(), "succeeded" | "failed" | "cancelled") =>
                {
                    let due_wall = self.start.1 + (due - self.start.0);
                    let finished: SystemTime =
                        job.finished_at.map_or_else(SystemTime::now, Into::into);
                    let e2e = finished.duration_since(due_wall).unwrap_or_default();
                    let mut st = self.state.lock().expect("not poisoned");
                    *st.ended.entry(job.status).or_default() += 1;
                    record(&mut st.end_to_end, e2e);
                    return None;
                }
                Ok(Some(job)) => last = job.status,
                Ok(None) => last = "missing".into(),
                Err(_) => {}
            }
            gap = (gap * 3 / 2).min(MAX_POLL_GAP);
        }
    }

    /// The time of this job's next poll under the global rate cap.
    fn reserve_slot(&self) -> Instant {
        let mut next = self.next_slot.lock().expect("not poisoned");
        let slot = (*next).max(Instant::now());
        *next = slot + self.gap;
        slot
    }

    /// Jobs accepted and not yet ended or given up on.
    pub fn pending(&self) -> u64 {
        let st = self.state.lock().expect("not poisoned");
        st.accepted - st.ended.values().sum::<u64>() - st.lost.values().sum::<u64>()
    }

    /// Waits up to `timeout` for the jobs still open, gives up on the rest, and sums up.
    pub async fn finish(self, timeout: Duration) -> TrackSummary {
        self.tasks.close();
        if tokio::time::timeout(timeout, self.tasks.wait())
            .await
            .is_err()
        {
            self.stop.cancel();
            self.tasks.wait().await;
        }
        let st = self.state.lock().expect("not poisoned");
        TrackSummary {
            accepted: st.accepted,
            ended: st.ended.clone(),
            lost: st.lost.clone(),
            lost_total: st.lost.values().sum(),
            lost_examples: st.lost_examples.clone(),
            end_to_end_ms: Percentiles::of(&st.end_to_end),
            polls: st.polls,
        }
    }
}
