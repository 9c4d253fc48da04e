//! The real `api` binary: OTLP export over both protocols with its resource, flushed on SIGTERM
//! with exit 0; JSON lines on stdout; a bad setting stops it with one line naming the variable.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::AsyncReadExt as _;
use tokio::process::Command;

use test_support::otlp;

const API: &str = env!("CARGO_BIN_EXE_api");

/// An api configuration with its own database and AMQP prefix on the test servers.
fn isolated_config() -> api::Config {
    let name = format!("p{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let mut config = api::Config::from_env().expect("default config");
    config.database_url = test_support::services::database_url(&format!("jobstack_{name}"));
    config.amqp.url = test_support::services::RABBITMQ.clone();
    config.amqp.prefix = name;
    config
}

/// Removes what `isolated_config` named: queues, exchanges, database.
async fn cleanup(config: &api::Config) {
    test_support::cleanup::remove_topology(&config.topology()).await;
    let database = config.database_url.rsplit('/').next().unwrap_or_default();
    test_support::cleanup::drop_database(database).await;
}

/// The api binary running with its own database and queue names, stdout captured.
struct ApiProcess {
    child: tokio::process::Child,
    url: String,
    config: api::Config,
    http: reqwest::Client,
    /// The demo key it was started with (an admin's).
    key: String,
}

impl ApiProcess {
    /// Starts the binary with `env` on top of an isolated configuration; waits until ready.
    async fn start(env: &[(&str, &str)]) -> Self {
        Self::start_on(isolated_config(), env).await
    }

    /// [`ApiProcess::start`] on `config`'s database and AMQP prefix.
    async fn start_on(config: api::Config, env: &[(&str, &str)]) -> Self {
        let key = api::access::keys::generate();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(API)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("API_LISTEN", format!("127.0.0.1:{port}"))
            .env("DATABASE_URL", &config.database_url)
            .env("AMQP_URL", &config.amqp.url)
            .env("AMQP_PREFIX", &config.amqp.prefix)
            .env("API_DEMO_KEY", &key)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let api = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            config,
            http: reqwest::Client::new(),
            key,
        };
        let start = Instant::now();
        // Ready and connected: the api is also ready (degraded) before its broker session is up.
        while !api.connected().await {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "api binary did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        api
    }

    async fn connected(&self) -> bool {
        let Ok(res) = self.http.get(format!("{}/readyz", self.url)).send().await else {
            return false;
        };
        res.json::<Value>()
            .await
            .is_ok_and(|b| b["status"] == "ready")
    }

    async fn post_job(&self) {
        let res = self
            .http
            .post(format!("{}/jobs", self.url))
            .bearer_auth(&self.key)
            .json(&json!({"kind": "hash", "payload": {"rounds": 1}}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202);
        // Published before the stop: the test is about exporting the publish's span, not about
        // a publish racing the signal (the shutdown's final flush has tests of its own).
        let start = Instant::now();
        loop {
            let metrics = self.http.get(format!("{}/metrics", self.url)).send().await;
            let text = metrics.unwrap().text().await.unwrap();
            if test_support::metrics::sum(&text, "jobstack_outbox_published_total", "") >= 1.0 {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the job was never published"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends SIGTERM, as `docker stop` and the kubelet do.
    fn sigterm(&self) {
        let pid = self.child.id().unwrap().to_string();
        assert!(
            std::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
    }

    /// SIGTERM: the api must drain, flush and exit 0. Returns stdout.
    async fn stop(mut self) -> String {
        self.sigterm();
        let status = tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .unwrap()
            .unwrap();
        let mut stdout = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .await
            .unwrap();
        assert!(status.success(), "exit status {status}; stdout:\n{stdout}");
        cleanup(&self.config).await;
        stdout
    }
}

async fn exports_spans_with_its_resource(protocol: &str) {
    let (endpoint, received) = otlp::receiver(protocol).await;
    let api = ApiProcess::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment.name=test",
        ),
    ])
    .await;
    api.post_job().await;
    let stdout = api.stop().await;

    let resources = received.resources();
    assert!(
        !resources.is_empty(),
        "the receiver got spans over {protocol}"
    );
    let names: Vec<&String> = resources.iter().flat_map(|(_, n)| n).collect();
    assert!(names.iter().any(|n| *n == "POST /jobs"), "{names:?}");
    assert!(names.iter().any(|n| n.starts_with("publish ")), "{names:?}");
    for (attrs, _) in &resources {
        let get = |k: &str| {
            attrs
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("service.name"), Some("api"));
        assert_eq!(get("service.version"), Some(env!("CARGO_PKG_VERSION")));
        assert_eq!(get("deployment.environment.name"), Some("test"));
    }

    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("every stdout line is JSON"))
        .collect();
    assert!(lines.iter().all(|l| l["service"] == "api"));
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "job accepted" && l["trace_id"].is_string())
    );
}

#[tokio::test]
async fn exports_over_grpc() {
    exports_spans_with_its_resource("grpc").await;
}

#[tokio::test]
async fn exports_over_http_protobuf() {
    exports_spans_with_its_resource("http/protobuf").await;
}

#[tokio::test]
async fn an_unreachable_collector_neither_blocks_nor_floods_the_logs() {
    // Nothing listens on port 9 (discard) here: every export fails.
    let api = ApiProcess::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
    ])
    .await;
    for _ in 0..50 {
        api.post_job().await;
    }
    let stdout = api.stop().await;
    let noise: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("opentelemetry"))
        .collect();
    assert!(
        noise.is_empty(),
        "export failures reached the logs: {noise:#?}"
    );
}

#[tokio::test]
async fn a_bad_setting_stops_start_up_with_one_line_naming_it() {
    for (var, value) in [
        ("API_LISTEN", "localhost"),
        ("DB_MAX_CONNECTIONS", "0"),
        ("BODY_LIMIT_BYTES", "lots"),
        ("RETRY_BASE_MS", "-1"),
        ("LOG_FORMAT", "xml"),
        ("RUST_LOG", "api=loud"),
        ("OTEL_TRACES_SAMPLER", "sometimes"),
        ("OTEL_TRACES_SAMPLER_ARG", "2"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "jaeger:4317"),
        ("DATABASE_URL", "mysql://root@127.0.0.1/x"),
        ("AMQP_URL", "http://guest:secret@rabbitmq:5672"),
        ("AMQP_URL", "amqps://guest:secret@rabbitmq:tls"),
        ("AMQP_CA_FILE", "/nonexistent/ca.crt"),
        ("AMQP_CA_FILE", "/proc/self/status"),
        ("PGSSLMODE", "verify-fully"),
        ("PGSSLROOTCERT", "/nonexistent/ca.crt"),
        ("JOB_LIMITS", "hash:concurrency=0"),
        ("JOB_LIMITS", "hash:rate=10/fortnight"),
        ("JOB_LIMITS", "no-such-kind:concurrency=1"),
        ("API_AUTH", "none"),
        ("API_DEMO_KEY", "jsk_secret-and-not-hex"),
        ("CLIENT_SUBMIT_RATE", "-1"),
        ("CONSOLE_JAEGER_URL", "jaeger:16686"),
        ("FAULTS_TOKEN", "short-secret"),
        ("METRICS_EXEMPLARS", "maybe"),
    ] {
        let mut cmd = Command::new(API);
        cmd.env("API_LISTEN", "127.0.0.1:0").env(var, value);
        if var == "OTEL_TRACES_SAMPLER_ARG" {
            cmd.env("OTEL_TRACES_SAMPLER", "traceidratio");
        }
        let out = tokio::time::timeout(Duration::from_secs(20), cmd.output())
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
            stderr.contains(var),
            "{var}={value}: the line names it: {stderr}"
        );
        assert!(
            !stderr.contains("secret"),
            "a password reached stderr: {stderr}"
        );
    }
}

#[tokio::test]
async fn no_api_key_reaches_a_log_line_or_a_span() {
    let (endpoint, received) = otlp::receiver("grpc").await;
    let api = ApiProcess::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_TRACES_SAMPLER", "always_on"),
    ])
    .await;
    api.post_job().await;
    let url = |path: &str| format!("{}{path}", api.url);
    // A key made through the api: its secret is in that answer only.
    let res = api
        .http
        .post(url("/keys"))
        .bearer_auth(&api.key)
        .json(&json!({ "name": "canary", "role": "viewer" }))
        .send()
        .await
        .unwrap();
    let trace = res.headers()["traceparent"]
        .to_str()
        .unwrap()
        .split('-')
        .nth(1)
        .unwrap()
        .to_owned();
    let made: Value = res.json().await.unwrap();
    let made = made["secret"].as_str().unwrap().to_owned();
    let res = api
        .http
        .get(url("/jobs"))
        .bearer_auth(&made)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // Wrong ones: well-formed and unknown, and not a key at all.
    let unknown = format!("jsk_{}", "c".repeat(64));
    let garbage = "CANARY-not-a-key-5f1e";
    for wrong in [unknown.as_str(), garbage] {
        let res = api
            .http
            .get(url("/jobs"))
            .bearer_auth(wrong)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401);
        let body = res.text().await.unwrap();
        assert!(!body.contains(wrong), "a 401 echoed the key: {body}");
    }
    // The console's login, with each.
    for key in [made.as_str(), unknown.as_str()] {
        api.http
            .post(url("/ui/login"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("key={key}"))
            .send()
            .await
            .unwrap();
    }
    let demo = api.key.clone();
    let stdout = api.stop().await;
    let spans = received.text();
    assert!(spans.contains("POST /jobs"), "no span was exported");
    assert!(
        stdout.contains("console login"),
        "the login was not logged at all"
    );
    // The key's making is audited, and its log line carries the request's trace id.
    let audited = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["message"] == "audited" && l["audit.action"] == "key.create")
        .expect("an audited line for key.create");
    assert_eq!(audited["trace_id"], trace.as_str(), "{audited}");
    for secret in [demo, made, unknown, garbage.to_owned()] {
        assert!(
            !stdout.contains(&secret),
            "a key reached the logs: {secret}"
        );
        assert!(!spans.contains(&secret), "a key reached a span: {secret}");
    }
}

#[tokio::test]
async fn create_key_prints_a_working_key_once_and_refuses_bad_arguments() {
    let config = isolated_config();
    let run = |args: &'static [&'static str]| {
        let mut cmd = Command::new(API);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("DATABASE_URL", &config.database_url)
            .args(args);
        async move {
            tokio::time::timeout(Duration::from_secs(60), cmd.output())
                .await
                .unwrap()
                .unwrap()
        }
    };
    for bad in [
        &["create-key"][..],
        &["create-key", "ops", "root"],
        &["create-key", "ops", "admin", "0"],
    ] {
        let out = run(bad).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad:?} was taken");
        assert_eq!(
            stderr.lines().count(),
            1,
            "{bad:?}: one line, got:\n{stderr}"
        );
        assert!(out.stdout.is_empty(), "{bad:?} printed on stdout");
    }
    let out = run(&["create-key", "ops", "viewer", "1d"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8(out.stdout).unwrap();
    let key = key.trim_end();
    assert!(
        api::access::keys::well_formed(key),
        "stdout is the key alone: {key:?}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("for ops (viewer)"));
    // The key works against an api on that database, with its role.
    let api = ApiProcess::start_on(config, &[]).await;
    let get = |path: &str| {
        api.http
            .get(format!("{}{path}", api.url))
            .bearer_auth(key)
            .send()
    };
    assert_eq!(get("/jobs").await.unwrap().status(), 200);
    assert_eq!(get("/keys").await.unwrap().status(), 403);
    api.stop().await;
}

/// Runs `api healthcheck` as the compose health check does, against `API_LISTEN=listen`.
async fn healthcheck(listen: &str) -> std::process::Output {
    test_support::healthcheck(API, "API_LISTEN", listen).await
}

#[tokio::test]
async fn the_healthcheck_is_zero_for_a_ready_api_and_non_zero_once_it_is_gone() {
    let api = ApiProcess::start(&[]).await;
    let listen = api.url.replace("http://127.0.0.1", "0.0.0.0");
    let ready = healthcheck(&listen).await;
    let stdout = String::from_utf8_lossy(&ready.stdout);
    assert!(ready.status.success(), "{ready:?}");
    assert!(
        stdout.starts_with(r#"ready: {"status":"ready""#),
        "{stdout}"
    );
    // A mistyped health check fails; it never starts a second api.
    let typo = Command::new(API).arg("healthz").output().await.unwrap();
    assert_eq!(typo.status.code(), Some(2), "{typo:?}");
    assert!(String::from_utf8_lossy(&typo.stderr).contains("usage:"));
    api.stop().await;
    let gone = healthcheck(&listen).await;
    assert!(!gone.status.success(), "a stopped api is not healthy");
    assert!(
        String::from_utf8_lossy(&gone.stderr).starts_with("not ready: connect"),
        "{gone:?}"
    );
}

/// The api's whole stop, measured: PostgreSQL stops answering (every connection frozen, as in a
/// partition) with requests in flight, then SIGTERM. The binary must exit within
/// `SHUTDOWN_GRACE_SECS` + `TEARDOWN` + `FLUSH_TIMEOUT`: the budget deploy/k8s holds the pod's
/// grace period to (tests/k8s/policy.py `shutdown`, with the ConfigMap's 25 s).
#[tokio::test]
async fn a_stalled_database_does_not_stretch_the_shutdown_past_its_budget() {
    let direct = isolated_config();
    let database = direct.database_url.rsplit('/').next().unwrap().to_owned();
    let port = test_support::net::free_port().await;
    let proxy = test_support::net::open_proxy(port, test_support::services::postgres_addr()).await;
    let mut config = direct.clone();
    config.database_url = test_support::services::database_url_via(&database, port);
    let grace = Duration::from_secs(2);
    let mut api = ApiProcess::start_on(config, &[("SHUTDOWN_GRACE_SECS", "2")]).await;

    proxy.freeze();
    let stuck: Vec<_> = (0..8)
        .map(|_| {
            let (http, url, key) = (api.http.clone(), api.url.clone(), api.key.clone());
            tokio::spawn(async move {
                let body = json!({"kind": "hash", "payload": {"rounds": 1}});
                let _ = http
                    .post(format!("{url}/jobs"))
                    .bearer_auth(key)
                    .json(&body)
                    .send()
                    .await;
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let signalled = Instant::now();
    api.sigterm();
    let budget = grace + api::startup::TEARDOWN + shared::telemetry::FLUSH_TIMEOUT;
    let exited = tokio::time::timeout(budget + Duration::from_secs(10), api.child.wait()).await;
    let took = signalled.elapsed();
    eprintln!("shutdown with PostgreSQL stalled took {took:?} (budget {budget:?})");
    assert!(exited.is_ok(), "still running {took:?} after SIGTERM");
    assert!(took <= budget, "took {took:?}, over the budget {budget:?}");
    for s in stuck {
        s.abort();
    }
    drop(proxy);
    cleanup(&direct).await;
}
