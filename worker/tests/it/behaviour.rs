//! The worker on its own, in-process against the test broker: what it does with each outcome of
//! a handler — success, transient failure (reported for the api to retry while attempts are
//! left, then dead-lettered), permanent failure, panic, deadline — and with a message nobody can
//! read. `TestWorker` owns its AMQP prefix and removes its queues and exchanges on drop, also
//! when an assertion fails.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use futures_util::StreamExt as _;
use jobs_contract::Topology;
use jobs_contract::messages::{HEARTBEAT_ROUTING_KEY, JobChange, JobEvent, JobMessage};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Connection};
use serde_json::{Value, json};
use test_support::cleanup::TopologyGuard;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::rabbitmq;

/// A worker with its own queue names, and a channel to feed and watch them.
struct TestWorker {
    topology: Topology,
    /// Keeps `ch` open.
    _conn: Connection,
    ch: Channel,
    events: lapin::Consumer,
    /// Events read from a message and not yet returned (a message may carry several).
    unread: VecDeque<JobEvent>,
    /// Messages read from the events queue.
    messages: usize,
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
    /// Dropped after the worker is stopped: removes the queues and exchanges.
    _removal: TopologyGuard,
}

impl TestWorker {
    /// A running worker with two slots whose attempts are capped at `deadline`.
    async fn spawn(deadline: Duration) -> Self {
        Self::spawn_with(deadline, 2, &[]).await
    }

    /// A running worker with `concurrency` slots whose attempts are capped at `deadline`, and
    /// `backlog` waiting in its queue when it starts.
    async fn spawn_with(deadline: Duration, concurrency: u16, backlog: &[JobMessage]) -> Self {
        test_support::metrics::require_process_per_test();
        let prefix = format!("tw{}", &Uuid::new_v4().simple().to_string()[..12]);
        let topology = Topology::new(&prefix);
        let removal = TopologyGuard(topology.clone());
        let conn = Connection::connect(&rabbitmq(), Default::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        // Declared here first, so the events queue exists before the first event.
        topology.declare(&ch).await.unwrap();
        let mut confirms = Vec::new();
        for job in backlog {
            let body = serde_json::to_vec(job).unwrap();
            let props = BasicProperties::default().with_delivery_mode(2);
            let exchange = topology.jobs_exchange();
            let sent = ch.basic_publish(
                exchange.as_str().into(),
                job.kind.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                props,
            );
            confirms.push(sent.await.unwrap());
        }
        for confirm in confirms {
            confirm.await.unwrap();
        }
        let events = ch
            .basic_consume(
                topology.events_queue().into(),
                "".into(),
                Default::default(),
                Default::default(),
            )
            .await
            .unwrap();
        let mut config = worker::Config::from_env().expect("default config");
        config.amqp.url = rabbitmq();
        config.amqp.prefix = prefix;
        config.deadline = Some(deadline);
        config.concurrency = concurrency;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(worker::run(listener, config, stop.clone()));
        let start = std::time::Instant::now();
        // The probe blocks: off the runtime thread, which the worker needs to answer it.
        let ready = move || {
            tokio::task::spawn_blocking(move || {
                shared::probe::probe(admin, Duration::from_secs(1)).is_ok()
            })
        };
        while !ready().await.unwrap() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "worker never ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self {
            topology,
            _conn: conn,
            ch,
            events,
            unread: VecDeque::new(),
            messages: 0,
            stop,
            task,
            _removal: removal,
        }
    }

    /// Publishes a first attempt of `kind` with two retries left (confirmed); returns its id.
    async fn submit(&self, kind: &str, payload: Value) -> Uuid {
        self.submit_message(crate::message(kind, payload)).await
    }

    /// Publishes `job` (confirmed), as the api's relay does; returns its id.
    async fn submit_message(&self, job: JobMessage) -> Uuid {
        self.publish(&job.kind, serde_json::to_vec(&job).unwrap())
            .await;
        job.id
    }

    /// Publishes attempt `attempt` of a job of `kind` with `retries_left`, as the api's relay
    /// does for a retry; returns its id.
    async fn submit_attempt(
        &self,
        kind: &str,
        payload: Value,
        attempt: u32,
        retries_left: u32,
    ) -> Uuid {
        let mut job = crate::message(kind, payload);
        job.attempt = attempt;
        job.retries_left = retries_left;
        self.submit_message(job).await
    }

    async fn publish(&self, routing_key: &str, body: Vec<u8>) {
        self.ch
            .basic_publish(
                self.topology.jobs_exchange().into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    /// The next event the worker reported, of any job.
    async fn next_event(&mut self) -> Option<JobEvent> {
        while self.unread.is_empty() {
            let delivery = tokio::time::timeout(Duration::from_secs(30), self.events.next())
                .await
                .ok()??
                .unwrap();
            delivery.acker.ack(Default::default()).await.unwrap();
            if delivery.routing_key.as_str() == HEARTBEAT_ROUTING_KEY {
                continue;
            }
            self.messages += 1;
            self.unread.extend(crate::job_events(&delivery));
        }
        self.unread.pop_front()
    }

    /// Every event of `id`'s attempt until its last one (success, cancel or failure).
    async fn until_settled(&mut self, id: Uuid) -> Vec<JobEvent> {
        let mut seen = Vec::new();
        loop {
            let event = self
                .next_event()
                .await
                .unwrap_or_else(|| panic!("no final event for {id}; saw {seen:#?}"));
            if event.job_id != id {
                continue;
            }
            let last = matches!(
                event.change,
                JobChange::Succeeded { .. } | JobChange::Cancelled | JobChange::Failed { .. }
            );
            seen.push(event);
            if last {
                return seen;
            }
        }
    }

    /// The dead-letter queue's messages: (`x-jobstack-reason` header, body).
    async fn dead_letters(&self) -> Vec<(String, Vec<u8>)> {
        test_support::queues::drain_dead_letters(&self.ch, &self.topology.dead_queue()).await
    }
}

impl Drop for TestWorker {
    /// Stops the worker; `_removal` then removes this test's queues and exchanges, pass or fail.
    fn drop(&mut self) {
        self.stop.cancel();
        self.task.abort();
    }
}

fn failed(event: &JobEvent) -> Option<(&str, bool)> {
    match &event.change {
        JobChange::Failed { error, retrying } => Some((error.as_str(), *retrying)),
        _ => None,
    }
}

#[tokio::test]
async fn a_transient_failure_is_reported_for_retry_until_the_last_attempt_is_dead_lettered() {
    let mut w = TestWorker::spawn(Duration::from_secs(30)).await;
    // Retries left: the failure says so, and nothing is dead-lettered or sent anywhere else
    // (the api schedules the retry).
    for attempt in [1, 2] {
        let id = w
            .submit_attempt("fail", json!({"transient": true}), attempt, 3 - attempt)
            .await;
        let events = w.until_settled(id).await;
        let failures: Vec<_> = events.iter().filter_map(failed).collect();
        assert_eq!(
            failures,
            [("simulated transient failure", true)],
            "{events:#?}"
        );
        assert_eq!(events.last().unwrap().attempt, attempt);
    }
    assert!(w.dead_letters().await.is_empty());
    // The last attempt: final, and a copy in the dead-letter queue with its reason.
    let id = w
        .submit_attempt("fail", json!({"transient": true}), 3, 0)
        .await;
    let events = w.until_settled(id).await;
    let failures: Vec<_> = events.iter().filter_map(failed).collect();
    assert_eq!(
        failures,
        [("simulated transient failure", false)],
        "{events:#?}"
    );
    let dead = w.dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].0, "exhausted");
    let copy: JobMessage = serde_json::from_slice(&dead[0].1).unwrap();
    assert_eq!((copy.id, copy.attempt), (id, 3));
}

#[tokio::test]
async fn a_permanent_failure_and_a_panic_are_dead_lettered_at_once() {
    let mut w = TestWorker::spawn(Duration::from_secs(30)).await;
    for (payload, error) in [
        (json!({"transient": false}), "simulated permanent failure"),
        (
            json!({"transient": true, "panic": true}),
            "handler panicked",
        ),
    ] {
        let id = w.submit("fail", payload).await;
        let events = w.until_settled(id).await;
        let failures: Vec<_> = events.iter().filter_map(failed).collect();
        assert_eq!(failures.len(), 1, "one attempt only: {events:#?}");
        assert!(failures[0].0.contains(error), "{:?}", failures[0]);
    }
    let reasons: Vec<String> = w.dead_letters().await.into_iter().map(|d| d.0).collect();
    assert_eq!(reasons, ["permanent", "permanent"]);
}

#[tokio::test]
async fn an_attempt_past_its_deadline_fails_as_timed_out_and_is_retried() {
    let mut w = TestWorker::spawn(Duration::from_millis(300)).await;
    let sleepy = json!({"duration_ms": 5000, "steps": 1});
    let first = w.submit_attempt("sleep", sleepy.clone(), 1, 1).await;
    let last = w.submit_attempt("sleep", sleepy, 2, 0).await;
    for (id, retrying) in [(first, true), (last, false)] {
        let events = w.until_settled(id).await;
        let failures: Vec<_> = events.iter().filter_map(failed).collect();
        assert_eq!(
            failures,
            [("timed out after 300ms", retrying)],
            "{events:#?}"
        );
    }
    let dead = w.dead_letters().await;
    assert_eq!(dead.len(), 1, "only the last attempt is dead-lettered");
    assert_eq!(dead[0].0, "exhausted");
}

#[tokio::test]
async fn an_undecodable_message_is_dead_lettered_and_the_worker_keeps_consuming() {
    let mut w = TestWorker::spawn(Duration::from_secs(30)).await;
    w.publish("sleep", b"{not json".to_vec()).await;
    let id = w
        .submit("sleep", json!({"duration_ms": 10, "steps": 1}))
        .await;
    let events = w.until_settled(id).await;
    assert!(matches!(
        events.last().unwrap().change,
        JobChange::Succeeded { .. }
    ));
    let dead = w.dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0], ("undecodable".to_owned(), b"{not json".to_vec()));
}

#[tokio::test]
async fn a_quick_success_sends_one_event_that_says_when_it_started() {
    let mut w = TestWorker::spawn(Duration::from_secs(30)).await;
    let before = chrono::Utc::now();
    let id = w.submit("hash", json!({"rounds": 10})).await;
    let events = w.until_settled(id).await;
    assert_eq!(events.len(), 1, "no separate started event: {events:#?}");
    let done = &events[0];
    let started = done.started_at.expect("the final event carries started_at");
    assert!(before <= started && started <= done.at, "{done:?}");
    let JobChange::Succeeded { result } = &done.change else {
        panic!("{events:#?}");
    };
    assert_eq!(result["rounds"], 10);
    assert!(w.dead_letters().await.is_empty());

    // A longer one reports started at its first progress interval, then its result.
    let id = w
        .submit("sleep", json!({"duration_ms": 300, "steps": 1}))
        .await;
    let events = w.until_settled(id).await;
    assert!(
        matches!(events.first().unwrap().change, JobChange::Started { .. }),
        "{events:#?}"
    );
    assert!(matches!(
        events.last().unwrap().change,
        JobChange::Succeeded { .. }
    ));
    assert!(events.iter().all(|e| e.started_at == events[0].started_at));
}

/// A busy worker's outcomes share messages: one publish, one delivery and one ack at the api for
/// many jobs, each job's outcome still reported exactly once.
#[tokio::test]
async fn a_busy_workers_events_share_messages() {
    // Waiting when the worker starts: a worker fed one job at a time has nothing to share.
    let backlog: Vec<JobMessage> = (0..300)
        .map(|_| crate::message("sleep", json!({"duration_ms": 0, "steps": 1})))
        .collect();
    let ids: Vec<Uuid> = backlog.iter().map(|j| j.id).collect();
    let mut w = TestWorker::spawn_with(Duration::from_secs(30), 32, &backlog).await;
    let mut succeeded: HashMap<Uuid, usize> = HashMap::new();
    while succeeded.len() < ids.len() {
        let event = w
            .next_event()
            .await
            .unwrap_or_else(|| panic!("{} of {} outcomes", succeeded.len(), ids.len()));
        if matches!(event.change, JobChange::Succeeded { .. }) {
            *succeeded.entry(event.job_id).or_default() += 1;
        }
    }
    assert!(
        ids.iter().all(|id| succeeded.get(id) == Some(&1)),
        "{succeeded:?}"
    );
    assert!(
        w.messages < ids.len(),
        "{} messages for {} outcomes: none shared",
        w.messages,
        ids.len()
    );
}
