//! `TestApp`: an isolated api + worker pair and the requests tests make of it.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use api::Config;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use test_support::services::database_url_via;
pub(crate) use test_support::services::{
    RABBITMQ, database_url, postgres_addr, rabbitmq_addr, rabbitmq_via,
};

/// Telemetry once per test process; log lines are shown only with `TEST_LOG=1`.
static TELEMETRY: LazyLock<()> = LazyLock::new(|| {
    let mut settings = shared::telemetry::Settings::from_env("it").expect("valid test env");
    settings.export = None;
    let guard = if std::env::var_os("TEST_LOG").is_some() {
        shared::telemetry::install(&settings, std::io::stderr)
    } else {
        shared::telemetry::install(&settings, std::io::sink)
    };
    // The provider must live as long as the process.
    std::mem::forget(guard.expect("telemetry installs"));
    // Panics print as they do outside the services: a failed assertion must say why, whatever
    // the log sink (`install` turns panics into log lines, which go nowhere without TEST_LOG).
    drop(std::panic::take_hook());
});

/// A worker on a runtime of its own, so that killing it drops every task it started (its job
/// handlers too), as a killed process would.
pub(crate) struct Worker {
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Worker {
    fn start(
        listener: TcpListener,
        config: worker::Config,
        registry: worker::kinds::Registry,
    ) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime for the worker");
        let listener = listener.into_std().expect("a std listener");
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = runtime.spawn(async move {
            let listener = TcpListener::from_std(listener)?;
            worker::run_with(listener, config, registry, token).await
        });
        Self {
            stop,
            task,
            runtime: Some(runtime),
        }
    }

    pub(crate) async fn stop(mut self) {
        self.stop.cancel();
        (&mut self.task)
            .await
            .unwrap()
            .expect("worker exits cleanly");
    }

    pub(crate) fn kill(mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// An api replica beside a [`TestApp`]'s own.
pub(crate) struct Replica {
    pub(crate) url: String,
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Replica {
    /// Stops it as SIGTERM does.
    pub(crate) async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap().expect("api exits cleanly");
    }
}

/// How to build a test app.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) worker: bool,
    pub(crate) max_attempts: u32,
    /// `RETRY_BASE_MS`: the back-off before the first retry.
    pub(crate) retry_base: Duration,
    /// `JOB_LEASE_SECS`: how long a running attempt may go without a heartbeat.
    pub(crate) lease: Duration,
    /// The kinds the api takes, when not the contract's.
    pub(crate) catalog: Option<jobs_contract::Catalog>,
    pub(crate) deadline: Duration,
    pub(crate) grace: Duration,
    pub(crate) body_limit: usize,
    pub(crate) amqp_url: String,
    pub(crate) worker_amqp_url: String,
    pub(crate) concurrency: u16,
    /// Reach PostgreSQL through this local port (a proxy the test can cut).
    pub(crate) postgres_via: Option<u16>,
    /// `JOB_RETENTION` (`None`: keep forever) and `RETENTION_INTERVAL_SECS`.
    pub(crate) retention: Option<Duration>,
    pub(crate) retention_interval: Duration,
    /// The schedules declared in the api's code (none: the demo's would fire in every test).
    pub(crate) schedules: Vec<api::schedules::ScheduleRequest>,
    /// `SCHEDULE_MISFIRE_GRACE_SECS`.
    pub(crate) misfire_grace: Duration,
    /// `JOB_LIMITS`.
    pub(crate) job_limits: &'static str,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            worker: true,
            max_attempts: 3,
            retry_base: Duration::from_millis(50),
            lease: Duration::from_secs(10),
            catalog: None,
            deadline: Duration::from_secs(30),
            grace: Duration::from_secs(10),
            body_limit: 1 << 20,
            amqp_url: RABBITMQ.clone(),
            worker_amqp_url: RABBITMQ.clone(),
            concurrency: 4,
            postgres_via: None,
            retention: None,
            retention_interval: Duration::from_secs(60),
            schedules: Vec::new(),
            misfire_grace: Duration::from_secs(60),
            job_limits: "",
        }
    }
}

/// A running api (and worker) with its own database and queue names.
pub(crate) struct TestApp {
    pub(crate) url: String,
    /// A client that sends the api's demo key (an admin's): what most tests are about is not
    /// who may do it.
    pub(crate) http: reqwest::Client,
    pub(crate) api_config: Config,
    pub(crate) worker_config: worker::Config,
    api_stop: CancellationToken,
    api_task: JoinHandle<anyhow::Result<()>>,
    worker: Option<Worker>,
    /// The kinds the api takes (the contract's, unless a test gave its own).
    pub(crate) catalog: jobs_contract::Catalog,
    /// The handlers the next worker started runs (the worker's own, unless a test sets others).
    pub(crate) registry: worker::kinds::Registry,
    /// The schedules declared in the api's code.
    pub(crate) schedules: Vec<api::schedules::ScheduleRequest>,
    /// Set by [`TestApp::stop`]; otherwise `Drop` cleans up (a failed assertion unwound).
    cleaned: bool,
}

impl TestApp {
    pub(crate) async fn spawn() -> Self {
        Self::with(Options::default()).await
    }

    /// The api alone: no worker consumes what it publishes.
    pub(crate) async fn api_only() -> Self {
        Self::with(Options {
            worker: false,
            ..Default::default()
        })
        .await
    }

    pub(crate) async fn with(opts: Options) -> Self {
        test_support::metrics::require_process_per_test();
        LazyLock::force(&TELEMETRY);
        let (_, api_config, worker_config) = configs(&opts);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let api_stop = CancellationToken::new();
        let catalog = opts
            .catalog
            .clone()
            .unwrap_or_else(jobs_contract::kinds::catalog);
        let api_task = tokio::spawn(api::run_with(
            listener,
            api_config.clone(),
            catalog.clone(),
            opts.schedules.clone(),
            api_stop.clone(),
        ));
        let mut app = Self {
            catalog,
            registry: worker::kinds::registry(),
            schedules: opts.schedules.clone(),
            url,
            http: authorized(api_config.demo_key.as_deref().expect("a demo key")),
            api_config,
            worker_config,
            api_stop,
            api_task,
            worker: None,
            cleaned: false,
        };
        // The api first: it installs the process's metrics recorder, with its own buckets.
        app.wait_until(Duration::from_secs(30), "api serving", || async {
            app.http
                .get(format!("{}/healthz", app.url))
                .send()
                .await
                .is_ok()
        })
        .await;
        if opts.worker {
            app.start_worker().await;
        }
        app
    }

    /// Stops the api as SIGTERM does and starts it again on a new port, with the same database
    /// and queues.
    pub(crate) async fn restart_api(&mut self) {
        self.pause_api(Duration::ZERO).await;
    }

    /// Stops the api as SIGTERM does, leaves it down for `down`, and starts it again on a new
    /// port, with the same database and queues: meanwhile nothing applies the workers' events.
    pub(crate) async fn pause_api(&mut self, down: Duration) {
        self.stop_api().await;
        tokio::time::sleep(down).await;
        self.start_api().await;
    }

    /// Stops the api as SIGTERM does; [`TestApp::start_api`] starts it again.
    pub(crate) async fn stop_api(&mut self) {
        self.api_stop.cancel();
        (&mut self.api_task)
            .await
            .unwrap()
            .expect("api exits cleanly");
    }

    /// Starts the api (again) on a new port, with the same database and queues.
    pub(crate) async fn start_api(&mut self) {
        let replica = self.replica().await;
        (self.url, self.api_stop, self.api_task) = (replica.url, replica.stop, replica.task);
    }

    /// Another api replica on the same database and queues, serving once this returns.
    pub(crate) async fn replica(&self) -> Replica {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        let task = tokio::spawn(api::run_with(
            listener,
            self.api_config.clone(),
            self.catalog.clone(),
            self.schedules.clone(),
            stop.clone(),
        ));
        let http = self.http.clone();
        self.wait_until(Duration::from_secs(30), "api serving", || async {
            http.get(format!("{url}/healthz")).send().await.is_ok()
        })
        .await;
        Replica { url, stop, task }
    }

    /// Sends `method` to `path`, with `body` as JSON if given.
    pub(crate) async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let res = req.send().await.unwrap();
        let status = res.status();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// Starts a worker (again) with this app's settings.
    pub(crate) async fn start_worker(&mut self) {
        self.worker = Some(self.launch_worker(self.worker_config.clone()).await);
    }

    /// Another worker beside this app's own, with this app's settings at `concurrency`,
    /// consuming once this returns. Stop it (or drop it: a kill) before the app stops.
    pub(crate) async fn extra_worker(&self, concurrency: u16) -> Worker {
        let mut config = self.worker_config.clone();
        config.concurrency = concurrency;
        self.launch_worker(config).await
    }

    /// A worker with `config` and this app's handlers, once its readiness check answers 200.
    async fn launch_worker(&self, config: worker::Config) -> Worker {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = format!("http://{}/readyz", listener.local_addr().unwrap());
        let worker = Worker::start(listener, config, self.registry.clone());
        let http = self.http.clone();
        self.wait_until(Duration::from_secs(30), "worker consuming", || async {
            http.get(&admin)
                .send()
                .await
                .is_ok_and(|r| r.status() == StatusCode::OK)
        })
        .await;
        worker
    }

    /// Stops the worker as SIGTERM does and waits for it to exit (in-flight jobs are asked to
    /// stop, save their checkpoints and hand their jobs back first).
    pub(crate) async fn stop_worker(&mut self) -> Duration {
        let worker = self.worker.take().expect("a worker runs");
        let start = Instant::now();
        worker.stop().await;
        start.elapsed()
    }

    /// Kills the worker as SIGKILL does: every one of its tasks is dropped where it stands, its
    /// connections close, nothing is reported.
    pub(crate) fn kill_worker(&mut self) {
        self.worker.take().expect("a worker runs").kill();
    }

    pub(crate) async fn post(
        &self,
        body: Value,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let res = self
            .http
            .post(format!("{}/jobs", self.url))
            .json(&body)
            .send()
            .await
            .unwrap();
        let (status, headers) = (res.status(), res.headers().clone());
        (status, headers, res.json().await.unwrap_or(Value::Null))
    }

    /// Posts a valid job and returns its id.
    pub(crate) async fn create(&self, kind: &str, payload: Value) -> String {
        let (status, _, body) = self.post(json!({ "kind": kind, "payload": payload })).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        body["id"].as_str().unwrap().to_owned()
    }

    pub(crate) async fn get(&self, path: &str) -> (StatusCode, Value) {
        let res = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap();
        let status = res.status();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    pub(crate) async fn job(&self, id: &str) -> Value {
        let (status, body) = self.get(&format!("/jobs/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    pub(crate) async fn cancel(&self, id: &str) -> (StatusCode, Value) {
        self.post_path(&format!("/jobs/{id}/cancel"), None).await
    }

    /// POSTs to `path`, with `body` as JSON if given.
    pub(crate) async fn post_path(&self, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self.http.post(format!("{}{path}", self.url));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let res = req.send().await.unwrap();
        let status = res.status();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// A pool on this app's database, for looking at (or ageing) rows directly.
    pub(crate) async fn db(&self) -> sqlx::PgPool {
        sqlx::PgPool::connect(&self.api_config.database_url)
            .await
            .unwrap()
    }

    /// Polls the job until `done(job)`; returns every distinct state seen on the way.
    pub(crate) async fn wait_for(
        &self,
        id: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        let start = Instant::now();
        let mut seen: Vec<Value> = Vec::new();
        loop {
            let job = self.job(id).await;
            if seen.last() != Some(&job) {
                seen.push(job.clone());
            }
            if done(&job) {
                return seen;
            }
            assert!(
                start.elapsed() < timeout,
                "job {id} still {job} after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for a final status.
    pub(crate) async fn wait_final(&self, id: &str, timeout: Duration) -> Value {
        let seen = self
            .wait_for(id, timeout, |j| {
                matches!(
                    j["status"].as_str(),
                    Some("succeeded" | "failed" | "cancelled")
                )
            })
            .await;
        seen.last().cloned().unwrap()
    }

    pub(crate) async fn wait_until<F, Fut>(&self, timeout: Duration, what: &str, check: F)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = bool>,
    {
        test_support::wait_until(timeout, what, check).await;
    }

    /// A channel on the test broker, for looking at queues directly.
    pub(crate) async fn channel(&self) -> Channel {
        let conn = lapin::Connection::connect(&RABBITMQ, Default::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        // Keep the connection alive as long as the test runs.
        std::mem::forget(conn);
        ch
    }

    /// Publishes raw bytes to an exchange.
    pub(crate) async fn publish_raw(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
    ) {
        let ch = self.channel().await;
        ch.basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            body,
            props,
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }

    /// Takes every message now in the dead-letter queue: (reason header, body).
    pub(crate) async fn drain_dead(&self) -> Vec<(String, Value)> {
        let ch = self.channel().await;
        let queue = self.api_config.topology().dead_queue();
        test_support::queues::drain_dead_letters(&ch, &queue)
            .await
            .into_iter()
            .map(|(reason, body)| (reason, serde_json::from_slice(&body).unwrap_or(Value::Null)))
            .collect()
    }

    /// Stops everything and removes the test's database, queues and exchanges.
    pub(crate) async fn stop(mut self) {
        if self.worker.is_some() {
            self.stop_worker().await;
        }
        self.api_stop.cancel();
        let _ = (&mut self.api_task).await;
        cleanup(&self.api_config).await;
        self.cleaned = true;
    }

    /// The sum of the samples of `series` whose labels contain `labels` (from `/metrics`); with
    /// `labels` empty, every sample of it. A series with no such sample fails the test, naming
    /// it: a renamed metric must not read as zero.
    pub(crate) async fn metric_sum(&self, series: &str, labels: &str) -> f64 {
        let res = self.http.get(format!("{}/metrics", self.url)).send().await;
        let text = res.unwrap().text().await.unwrap();
        test_support::metrics::sum(&text, series, labels)
    }

    /// The number of job rows, to prove a refused request stored nothing.
    pub(crate) async fn count_jobs(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM jobs")
            .fetch_one(&self.db().await)
            .await
            .unwrap()
    }
}

impl Drop for TestApp {
    /// A test that fails before `stop()` still leaves no database, queue or exchange behind.
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        self.api_stop.cancel();
        self.api_task.abort();
        if let Some(worker) = self.worker.take() {
            worker.kill();
        }
        let config = self.api_config.clone();
        test_support::cleanup::on_drop(async move { cleanup(&config).await });
    }
}

/// Settings for an isolated api + worker pair: a unique name for the database and the AMQP
/// prefix, fast retries.
pub(crate) fn configs(opts: &Options) -> (String, Config, worker::Config) {
    let name = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let mut api_config = Config::from_env().expect("default config");
    let database = format!("jobstack_{name}");
    api_config.database_url = match opts.postgres_via {
        Some(port) => database_url_via(&database, port),
        None => database_url(&database),
    };
    api_config.amqp.url = opts.amqp_url.clone();
    api_config.amqp.prefix = name.clone();
    api_config.retry_base = opts.retry_base;
    api_config.max_attempts = opts.max_attempts;
    api_config.lease = opts.lease;
    api_config.body_limit = opts.body_limit;
    api_config.grace = opts.grace;
    api_config.relay_interval = Duration::from_millis(200);
    api_config.db_max_connections = 4;
    api_config.retention = opts.retention;
    api_config.retention_interval = opts.retention_interval;
    api_config.misfire_grace = opts.misfire_grace;
    api_config.job_limits = api::flow::settings::parse(opts.job_limits).expect("valid JOB_LIMITS");
    api_config.auth = api::access::Mode::Keys;
    api_config.demo_key = Some(api::access::keys::generate());
    // Tests send bursts; the quota tests set their own.
    api_config.client_quota = api::access::quota::Defaults {
        submit_rate: None,
        max_in_flight: None,
    };

    let mut worker_config = worker::Config::from_env().expect("default config");
    worker_config.amqp.url = opts.worker_amqp_url.clone();
    worker_config.amqp.prefix = name.clone();
    worker_config.deadline = Some(opts.deadline);
    worker_config.grace = opts.grace;
    worker_config.concurrency = opts.concurrency;
    (name, api_config, worker_config)
}

/// An HTTP client that sends `key` with every request.
pub(crate) fn authorized(key: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}")).unwrap();
    value.set_sensitive(true);
    headers.insert(reqwest::header::AUTHORIZATION, value);
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

/// Removes a test's queues, exchanges and database.
pub(crate) async fn cleanup(api_config: &Config) {
    test_support::cleanup::remove_topology(&api_config.topology()).await;
    // The database is named after the prefix (see `configs`).
    test_support::cleanup::drop_database(&format!("jobstack_{}", api_config.amqp.prefix)).await;
}

/// Waits (30 s at most) until the api's `series` with `labels` sums to `at_least`.
pub(crate) async fn wait_metric(app: &TestApp, series: &str, labels: &str, at_least: f64) {
    app.wait_until(Duration::from_secs(30), series, || async {
        app.metric_sum(series, labels).await >= at_least
    })
    .await;
}

/// Runs a job submitted after the cancelled one (the relay and the queue keep order, so the
/// worker has taken the cancelled one by then) and asserts no `kind` handler ever started.
pub(crate) async fn assert_never_ran(app: &TestApp, kind: &str, why: &str) {
    let later = app
        .create("sleep", json!({"duration_ms": 10, "steps": 1}))
        .await;
    assert_eq!(
        app.wait_final(&later, Duration::from_secs(30)).await["status"],
        "succeeded"
    );
    let label = format!("kind=\"{kind}\"");
    assert_eq!(
        app.metric_sum("jobstack_jobs_started_total", &label).await,
        0.0,
        "{why}"
    );
}
