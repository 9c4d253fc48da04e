//! Where the tests' PostgreSQL and RabbitMQ are. The defaults work against this machine's
//! services (trust auth ignores the password) and against the compose ones, which `.env`
//! publishes on loopback.

use std::sync::LazyLock;

/// The test broker: `TEST_AMQP_URL`, or guest/guest on 127.0.0.1:5672.
pub static RABBITMQ: LazyLock<String> = LazyLock::new(|| {
    std::env::var("TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
});

/// The test PostgreSQL server, as a URL of any database on it: `TEST_DATABASE_URL`, or the
/// compose credentials on 127.0.0.1:5432.
pub static POSTGRES: LazyLock<String> = LazyLock::new(|| {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into())
});

/// The URL of database `name` on the test PostgreSQL server.
pub fn database_url(name: &str) -> String {
    let (scheme, user, host, path) = split_url(&POSTGRES);
    let query = path
        .split_once('?')
        .map(|(_, q)| format!("?{q}"))
        .unwrap_or_default();
    format!("{scheme}://{user}{host}/{name}{query}")
}

/// The URL of database `name` on the test PostgreSQL server, reached through `127.0.0.1:port`.
pub fn database_url_via(name: &str, port: u16) -> String {
    let url = database_url(name);
    let (scheme, user, _, path) = split_url(&url);
    format!("{scheme}://{user}127.0.0.1:{port}/{path}")
}

/// The test PostgreSQL server's `host:port`, for proxies that stand in front of it.
pub fn postgres_addr() -> String {
    let (_, _, host, _) = split_url(&POSTGRES);
    if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:5432")
    }
}

/// The test broker's `host:port`, for proxies that stand in front of it.
pub fn rabbitmq_addr() -> String {
    let uri: lapin::uri::AMQPUri = RABBITMQ.parse().expect("TEST_AMQP_URL is an amqp:// URL");
    format!("{}:{}", uri.authority.host, uri.authority.port)
}

/// The test broker's URL with its address replaced by `127.0.0.1:port` (a proxy's).
pub fn rabbitmq_via(port: u16) -> String {
    let uri: lapin::uri::AMQPUri = RABBITMQ.parse().expect("TEST_AMQP_URL is an amqp:// URL");
    let user = &uri.authority.userinfo;
    let (name, password, vhost) = (
        escape(&user.username),
        escape(&user.password),
        escape(&uri.vhost),
    );
    format!("amqp://{name}:{password}@127.0.0.1:{port}/{vhost}")
}

/// `(scheme, userinfo@ or "", host:port, path)` of a URL like `postgres://u:p@host:port/db?q`.
fn split_url(url: &str) -> (&str, &str, &str, &str) {
    let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let at = authority.rfind('@').map_or(0, |i| i + 1);
    (scheme, &authority[..at], &authority[at..], path)
}

/// Percent-encodes what would end a URL part early.
fn escape(part: &str) -> String {
    part.chars()
        .map(|c| match c {
            '%' | '@' | ':' | '/' | '?' | '#' => format!("%{:02X}", c as u32),
            c => c.to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_credentials_and_query_and_swap_the_address() {
        assert_eq!(
            split_url("postgres://u:p@db:5433/x?sslmode=disable"),
            ("postgres", "u:p@", "db:5433", "x?sslmode=disable")
        );
        assert_eq!(escape("a/b:c@d"), "a%2Fb%3Ac%40d");
    }
}
