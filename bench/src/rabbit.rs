//! The RabbitMQ management API: the broker's version, and removing every queue and exchange a
//! prefix names (the services declare their own topology, so the bench finds them by name).

use anyhow::Context as _;
use serde::Deserialize;

/// A management API client.
#[derive(Debug, Clone)]
pub struct Rabbit {
    client: reqwest::Client,
    base: reqwest::Url,
    user: String,
    password: String,
}

#[derive(Debug, Deserialize)]
struct Named {
    name: String,
}

impl Rabbit {
    /// A client for the API at `url` (`http://user:password@host:15672/api`).
    pub fn new(url: &str) -> anyhow::Result<Self> {
        let mut base = reqwest::Url::parse(url).context("BENCH_RABBIT_API")?;
        let user = base.username().to_owned();
        let password = base.password().unwrap_or_default().to_owned();
        // Credentials go in the Authorization header, not the URL of every request.
        let _ = base.set_username("");
        let _ = base.set_password(None);
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()?;
        Ok(Self {
            client,
            base,
            user,
            password,
        })
    }

    /// The broker's version; also proves the API answers before anything is made.
    pub async fn version(&self) -> anyhow::Result<String> {
        #[derive(Deserialize)]
        struct Overview {
            rabbitmq_version: String,
        }
        let o: Overview = self
            .get("overview")
            .await
            .context("RabbitMQ management API (BENCH_RABBIT_API)")?;
        Ok(o.rabbitmq_version)
    }

    /// Deletes every queue and exchange of the default vhost whose name starts with `prefix`.
    pub async fn delete_starting(&self, prefix: &str) -> anyhow::Result<()> {
        for kind in ["queues", "exchanges"] {
            let names: Vec<Named> = self.get(&format!("{kind}/%2f?columns=name")).await?;
            for n in names.iter().filter(|n| n.name.starts_with(prefix)) {
                let url = self.base.join(&format!("{kind}/%2f/{}", encode(&n.name)))?;
                self.client
                    .delete(url)
                    .basic_auth(&self.user, Some(&self.password))
                    .send()
                    .await?
                    .error_for_status()
                    .with_context(|| format!("deleting {kind} {}", n.name))?;
            }
        }
        Ok(())
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let url = self.base.join(path)?;
        Ok(self
            .client
            .get(url)
            .basic_auth(&self.user, Some(&self.password))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }
}

/// Percent-encodes a queue or exchange name for a URL path segment.
fn encode(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_encoded_for_a_path() {
        assert_eq!(
            encode("bench_1.jobs.retry.1000ms"),
            "bench_1.jobs.retry.1000ms"
        );
        assert_eq!(encode("a b/c%"), "a%20b%2Fc%25");
    }

    #[test]
    fn credentials_leave_the_url() {
        let r = Rabbit::new("http://guest:pw@127.0.0.1:15672/api").unwrap();
        assert_eq!(r.base.as_str(), "http://127.0.0.1:15672/api/");
        assert_eq!((r.user.as_str(), r.password.as_str()), ("guest", "pw"));
    }
}
