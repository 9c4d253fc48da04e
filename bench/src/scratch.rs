//! What a run makes on the shared servers, and its removal. Every database, queue and exchange
//! is named after the run id, so the final sweep finds all of them by name, even those of a
//! step that failed halfway; [`Scratch`] sweeps on drop too when the run did not get to it.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::pg::Pg;
use crate::rabbit::Rabbit;

/// The run's names and the servers they live on.
#[derive(Debug)]
pub struct Scratch {
    run: String,
    pg_url: String,
    rabbit_url: String,
    swept: AtomicBool,
}

impl Scratch {
    /// A run id made of the time and the process id: `bench_20261123_134700_4242`.
    pub fn new(pg_url: &str, rabbit_url: &str) -> Self {
        let now = chrono::Utc::now().format("%Y%m%d_%H%M%S");
        Self {
            run: format!("bench_{now}_{}", std::process::id()),
            pg_url: pg_url.to_owned(),
            rabbit_url: rabbit_url.to_owned(),
            swept: AtomicBool::new(false),
        }
    }

    /// The run id.
    pub fn run(&self) -> &str {
        &self.run
    }

    /// The name of one thing the run makes: a database and the AMQP prefix of its services.
    pub fn name(&self, what: &str) -> String {
        format!("{}_{what}", self.run)
    }

    /// Removes one step's database and its queues and exchanges at once: tens of thousands of
    /// messages left in a quorum queue cost RabbitMQ memory and CPU in the next step.
    pub async fn remove(&self, pg: &Pg, rabbit: &Rabbit, name: &str) -> anyhow::Result<()> {
        rabbit.delete_starting(&format!("{name}.")).await?;
        pg.drop(name).await
    }

    /// Removes everything named after the run; logs what it could not remove.
    pub async fn sweep(&self) {
        self.swept.store(true, Ordering::SeqCst);
        let prefix = format!("{}_", self.run);
        // Fresh clients: the run's own may belong to a runtime that is gone.
        match Rabbit::new(&self.rabbit_url) {
            Ok(rabbit) => {
                if let Err(e) = rabbit.delete_starting(&prefix).await {
                    crate::log(&format!("cleanup: queues and exchanges {prefix}*: {e:#}"));
                }
            }
            Err(e) => crate::log(&format!("cleanup: {e:#}")),
        }
        let dropped = async {
            let pg = Pg::connect(&self.pg_url).await?;
            for db in pg.databases_starting(&prefix).await? {
                pg.drop(&db).await?;
            }
            anyhow::Ok(())
        };
        if let Err(e) = dropped.await {
            crate::log(&format!("cleanup: databases {prefix}*: {e:#}"));
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.swept.load(Ordering::SeqCst) {
            return;
        }
        // From synchronous code: on a thread and runtime of its own, as the run's runtime may be
        // the one unwinding.
        let scratch = Self {
            run: self.run.clone(),
            pg_url: self.pg_url.clone(),
            rabbit_url: self.rabbit_url.clone(),
            swept: AtomicBool::new(true),
        };
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(scratch.sweep());
            }
        })
        .join();
    }
}
