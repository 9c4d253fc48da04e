//! The real `worker` binary against the local RabbitMQ: SIGTERM with a long job in flight saves
//! its checkpoint, hands it back and exits 0; a bad setting stops it with one line naming the
//! variable.

use std::process::Stdio;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use jobs_contract::Topology;
use jobs_contract::messages::{EventBatch, HEARTBEAT_ROUTING_KEY, JobChange, JobEvent, JobMessage};
use lapin::options::{BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Connection};
use tokio::process::Command;

const WORKER: &str = env!("CARGO_BIN_EXE_worker");

mod behaviour;

/// A first attempt of a job of `kind`, as the api's relay would publish it.
fn message(kind: &str, payload: serde_json::Value) -> JobMessage {
    JobMessage {
        id: uuid::Uuid::new_v4(),
        kind: kind.into(),
        payload,
        payload_version: 1,
        attempt: 1,
        generation: 0,
        available_at: chrono::Utc::now(),
        retries_left: 2,
        lease_ms: 10_000,
        checkpoint: None,
        previous_attempt: None,
        inputs: Default::default(),
        snoozes: 0,
    }
}

/// The test broker: `TEST_AMQP_URL`, or guest/guest on 127.0.0.1:5672 (local or compose).
fn rabbitmq() -> String {
    test_support::services::RABBITMQ.clone()
}

/// Runs `worker healthcheck` as the compose health check does, against `WORKER_LISTEN=listen`.
async fn healthcheck(listen: &str) -> std::process::Output {
    test_support::healthcheck(WORKER, "WORKER_LISTEN", listen).await
}

async fn channel() -> (Connection, Channel) {
    let conn = Connection::connect(&rabbitmq(), Default::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    (conn, ch)
}

#[tokio::test]
async fn sigterm_with_a_job_in_flight_checkpoints_it_hands_it_back_and_exits_zero() {
    let prefix = format!("w{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let topology = Topology::new(&prefix);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(WORKER)
        .env("AMQP_URL", rabbitmq())
        .env("AMQP_PREFIX", &prefix)
        .env("WORKER_LISTEN", format!("127.0.0.1:{port}"))
        .env("SHUTDOWN_GRACE_SECS", "10")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let start = Instant::now();
    // Ready when the compose health check says so: the real binary's `healthcheck`.
    let listen = format!("0.0.0.0:{port}");
    while !healthcheck(&listen).await.status.success() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "worker never ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (_conn, ch) = channel().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let job = message(
        "sleep",
        serde_json::json!({"duration_ms": 20_000, "steps": 20}),
    );
    ch.basic_publish(
        topology.jobs_exchange().into(),
        "sleep".into(),
        BasicPublishOptions::default(),
        &serde_json::to_vec(&job).unwrap(),
        BasicProperties::default().with_delivery_mode(2),
    )
    .await
    .unwrap()
    .await
    .unwrap();

    // Once the attempt has saved a checkpoint, stop the worker as `docker stop` would.
    let mut events = ch
        .basic_consume(
            topology.events_queue().into(),
            "".into(),
            Default::default(),
            Default::default(),
        )
        .await
        .unwrap();
    // A checkpoint first (a step of a second done), so there is something to resume from.
    let mut seen = Vec::new();
    while !seen.contains(&"checkpoint") {
        let d = tokio::time::timeout(Duration::from_secs(30), events.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        d.acker.ack(Default::default()).await.unwrap();
        for e in job_events(&d) {
            assert_eq!(e.job_id, job.id);
            seen.push(e.change.name());
        }
    }
    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit status {status}");
    let gone = healthcheck(&listen).await;
    assert!(!gone.status.success(), "a stopped worker is not healthy");
    assert!(
        String::from_utf8_lossy(&gone.stderr).starts_with("not ready: connect"),
        "{gone:?}"
    );

    // Before it exited, the attempt saved where it got to and handed the job back: the next
    // worker resumes it from there.
    while !seen.contains(&"released") {
        let d = tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .unwrap_or_else(|_| panic!("no released event; saw {seen:?}"))
            .unwrap()
            .unwrap();
        d.acker.ack(Default::default()).await.unwrap();
        for e in job_events(&d) {
            if let JobChange::Checkpoint { state } = &e.change {
                assert!(state["steps"].as_u64() >= Some(1), "{state}");
            }
            seen.push(e.change.name());
        }
    }
    assert_eq!(seen.first(), Some(&"started"), "{seen:?}");
    // And the job was acked: nothing is left in the work queue.
    let left = ch
        .basic_get(
            topology.jobs_queue().into(),
            BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap();
    assert!(left.is_none(), "the job was acked, not handed back");
    test_support::cleanup::remove_topology(&topology).await;
}

#[tokio::test]
async fn a_bad_setting_stops_start_up_with_one_line_naming_it() {
    for (var, value) in [
        ("WORKER_CONCURRENCY", "abc"),
        ("WORKER_CONCURRENCY", "0"),
        ("WORKER_LISTEN", "8081"),
        ("SHUTDOWN_GRACE_SECS", "-3"),
        ("JOB_DEADLINE_SECS", "-1"),
        ("PUBLISH_TIMEOUT_MS", "1"),
        ("LOG_FORMAT", "yaml"),
        ("AMQP_URL", "rabbitmq:5672"),
        ("AMQP_CA_FILE", "/nonexistent/ca.crt"),
    ] {
        let out = tokio::time::timeout(
            Duration::from_secs(20),
            Command::new(WORKER)
                .env("WORKER_LISTEN", "127.0.0.1:0")
                .env(var, value)
                .output(),
        )
        .await
        .unwrap()
        .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{var}={value} was accepted");
        assert_eq!(
            stderr.lines().count(),
            1,
            "{var}={value}: one line, got:\n{stderr}"
        );
        assert!(
            stderr.starts_with("worker: invalid ") && stderr.contains(var),
            "{stderr}"
        );
    }
}

#[tokio::test]
async fn the_healthcheck_fails_fast_when_the_worker_cannot_consume_or_does_not_answer() {
    // A worker whose broker is unreachable serves its admin port but is not ready.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let broker = closed.local_addr().unwrap();
    drop(closed);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let _worker = Command::new(WORKER)
        .env("AMQP_URL", format!("amqp://guest:guest@{broker}/%2f"))
        .env("WORKER_LISTEN", &listen)
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let start = Instant::now();
    let out = loop {
        let out = healthcheck(&listen).await;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !stderr.starts_with("not ready: connect") {
            break out;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "admin port never opened"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("answered 503") && stderr.contains("rabbitmq down"),
        "{stderr}"
    );

    // A port that accepts and never answers (a hung process): non-zero, inside the 3 s timeout.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let out = healthcheck(&hung.local_addr().unwrap().to_string()).await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no complete answer"),
        "{out:?}"
    );
}

/// The job events a message of the events queue carries (none in a heartbeat).
fn job_events(d: &lapin::message::Delivery) -> Vec<JobEvent> {
    if d.routing_key.as_str() == HEARTBEAT_ROUTING_KEY {
        return Vec::new();
    }
    let batch = EventBatch::read(d.routing_key.as_str(), &d.data).unwrap();
    batch.events.into_iter().map(|b| b.event).collect()
}
