//! Removing what a test made on the shared servers. [`on_drop`] runs it from a `Drop`, so a
//! test that fails before its end still leaves no database, queue or exchange behind.

use std::future::Future;

use jobs_contract::Topology;
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};

use crate::services::{POSTGRES, RABBITMQ};

/// Deletes every queue and exchange of `topology` from the test broker.
pub async fn remove_topology(t: &Topology) {
    let Ok(conn) = lapin::Connection::connect(&RABBITMQ, Default::default()).await else {
        return;
    };
    let Ok(ch) = conn.create_channel().await else {
        return;
    };
    for q in t.queues() {
        let _ = ch
            .queue_delete(q.name.into(), QueueDeleteOptions::default())
            .await;
    }
    for (x, _) in t.exchanges() {
        let _ = ch
            .exchange_delete(x.into(), ExchangeDeleteOptions::default())
            .await;
    }
    let _ = conn.close(200, "test over".into()).await;
}

/// Drops database `name` from the test PostgreSQL server, closing its connections.
pub async fn drop_database(name: &str) {
    if let Ok(pool) = sqlx::PgPool::connect(&POSTGRES).await {
        let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
        let _ = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&pool).await;
        pool.close().await;
    }
}

/// Runs `cleanup` to the end from synchronous code (a `Drop`), on a thread and runtime of its
/// own: the test's runtime may be unwinding, or be the thread that would have to drive it.
pub fn on_drop<F>(cleanup: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let _ = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for cleanup")
            .block_on(cleanup);
    })
    .join();
}

/// Removes a topology's queues and exchanges when dropped: create it before declaring them, so
/// a test that fails anywhere after that leaves nothing behind.
#[derive(Debug)]
pub struct TopologyGuard(pub Topology);

impl Drop for TopologyGuard {
    fn drop(&mut self) {
        let topology = self.0.clone();
        on_drop(async move { remove_topology(&topology).await });
    }
}
