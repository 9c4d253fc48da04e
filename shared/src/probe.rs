//! `api healthcheck` / `worker healthcheck`: a tiny HTTP probe of the service's own `/readyz`,
//! so that container health checks work in a distroless image that has no shell, curl or wget.
//!
//! Blocking `std::net` on purpose: the probe runs in `main` before any Tokio runtime exists (a
//! runtime built inside `#[tokio::main]` panics), and one deadline bounds every step — connect,
//! write, each read — so a closed port, a peer that accepts and never answers, or one that drips
//! bytes forever all end inside compose's `timeout: 3s`.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// The whole probe's budget: well under compose's `timeout: 5s` ([`COMPOSE_TIMEOUT`]), so that a
/// process that starts slowly on a loaded host (seen: over a second) still answers in time.
pub const BUDGET: Duration = Duration::from_secs(2);

/// The `timeout` of the api's and the worker's health checks in `docker-compose.yml`: what a
/// probe run must finish within, process start included.
pub const COMPOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// At most this much of the answer is read: `/readyz` bodies are a few hundred bytes.
const MAX_ANSWER: usize = 16 * 1024;

/// Why the service is not (known to be) ready.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Nothing accepts on the port (the process is gone or not listening yet).
    #[error("connect {addr}: {source}")]
    Connect {
        /// Where the probe connected.
        addr: SocketAddr,
        /// The socket error.
        source: io::Error,
    },
    /// Connected, but no complete answer before the deadline.
    #[error("{addr}: no complete answer within {budget:?}")]
    Timeout {
        /// Where the probe connected.
        addr: SocketAddr,
        /// The budget that ran out.
        budget: Duration,
    },
    /// The connection failed after it was made.
    #[error("{addr}: {source}")]
    Io {
        /// Where the probe connected.
        addr: SocketAddr,
        /// The socket error.
        source: io::Error,
    },
    /// The answer is not an HTTP/1.x response.
    #[error("{addr}: not an HTTP answer: {start:?}")]
    NotHttp {
        /// Where the probe connected.
        addr: SocketAddr,
        /// The first bytes received, lossily decoded.
        start: String,
    },
    /// `/readyz` answered, with a status other than 200.
    #[error("{addr}: /readyz answered {status}: {body}")]
    NotReady {
        /// Where the probe connected.
        addr: SocketAddr,
        /// The HTTP status.
        status: u16,
        /// The answer's body (it names what is missing).
        body: String,
    },
}

/// Where to reach a service that listens on `listen`: an unspecified address (`0.0.0.0`, `::`)
/// means "every interface", so the probe uses the loopback address of the same family.
pub fn target(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// `GET /readyz` on `addr`; the body when it answers 200 within `budget`.
pub fn probe(addr: SocketAddr, budget: Duration) -> Result<String, ProbeError> {
    let deadline = Instant::now() + budget;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or(ProbeError::Timeout { addr, budget })
    };
    let io_err = |source: io::Error| match source.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ProbeError::Timeout { addr, budget },
        _ => ProbeError::Io { addr, source },
    };
    let mut stream = TcpStream::connect_timeout(&addr, left()?).map_err(|source| {
        if source.kind() == io::ErrorKind::TimedOut {
            ProbeError::Timeout { addr, budget }
        } else {
            ProbeError::Connect { addr, source }
        }
    })?;
    stream.set_write_timeout(Some(left()?)).map_err(io_err)?;
    stream
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .map_err(io_err)?;
    // `Connection: close`: the answer ends at EOF. Each read gets only what is left of the budget.
    let mut answer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    while answer.len() < MAX_ANSWER {
        stream.set_read_timeout(Some(left()?)).map_err(io_err)?;
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err(e)),
        }
    }
    parse(addr, &answer)
}

/// The status line and body of an HTTP/1.x answer; the body when the status is 200.
fn parse(addr: SocketAddr, answer: &[u8]) -> Result<String, ProbeError> {
    let text = String::from_utf8_lossy(answer);
    let not_http = || ProbeError::NotHttp {
        addr,
        start: text.chars().take(40).collect(),
    };
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(not_http)?;
    let status_line = head.lines().next().unwrap_or_default();
    let mut words = status_line.split(' ');
    let (Some(version), Some(code)) = (words.next(), words.next()) else {
        return Err(not_http());
    };
    let status: u16 = match code.parse() {
        Ok(s) if version.starts_with("HTTP/1.") && (100..600).contains(&s) => s,
        _ => return Err(not_http()),
    };
    // A chunked body would show its chunk sizes; axum sends `content-length` for these bodies.
    let body = body.trim().to_owned();
    if status == 200 {
        Ok(body)
    } else {
        Err(ProbeError::NotReady { addr, status, body })
    }
}

/// Runs the probe when the first argument is `healthcheck`; returns `None` when there is no
/// argument (start the service), and a usage error for anything else — a mistyped health check
/// must fail, not start a second copy of the service.
///
/// Call it first thing in a synchronous `main`, before any runtime is built. It prints one line
/// (Docker keeps it in `docker inspect`'s health log) and exits 0 only for a 200.
pub fn run_if_requested(listen: impl FnOnce() -> SocketAddr) -> Option<ExitCode> {
    let mut args = std::env::args();
    let program = args.next().unwrap_or_default();
    match (args.next().as_deref(), args.next()) {
        (None, _) => None,
        (Some("healthcheck"), None) => Some(match probe(target(listen()), BUDGET) {
            Ok(body) => {
                println!("ready: {body}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("not ready: {e}");
                ExitCode::FAILURE
            }
        }),
        _ => {
            eprintln!("usage: {program} [healthcheck]");
            Some(ExitCode::from(2))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread;

    const SHORT: Duration = Duration::from_millis(300);

    /// A one-connection server that runs `serve` on the accepted socket.
    fn server(serve: impl FnOnce(TcpStream) + Send + 'static) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            if let Ok((stream, _)) = listener.accept() {
                serve(stream);
            }
        });
        addr
    }

    fn answering(answer: &'static [u8]) -> SocketAddr {
        server(move |mut s| {
            let mut request = [0u8; 1024];
            let _ = s.read(&mut request);
            let _ = s.write_all(answer);
        })
    }

    #[test]
    fn a_200_is_ready_and_returns_the_body() {
        let addr = answering(b"HTTP/1.1 200 OK\r\ncontent-length: 16\r\n\r\n{\"status\":\"ok\"}\n");
        assert_eq!(probe(addr, BUDGET).unwrap(), "{\"status\":\"ok\"}");
    }

    #[test]
    fn a_503_is_not_ready_and_keeps_the_reason() {
        let addr = answering(b"HTTP/1.1 503 Service Unavailable\r\n\r\nPostgreSQL down");
        let err = probe(addr, BUDGET).unwrap_err();
        assert!(
            matches!(&err, ProbeError::NotReady { status: 503, body, .. } if body == "PostgreSQL down"),
            "{err:?}"
        );
    }

    #[test]
    fn a_closed_port_is_a_connect_error() {
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap(); // the listener is dropped here: nothing listens on addr
        let err = probe(addr, BUDGET).unwrap_err();
        assert!(matches!(err, ProbeError::Connect { .. }), "{err:?}");
    }

    #[test]
    fn a_peer_that_accepts_and_never_answers_times_out() {
        let addr = server(|s| {
            thread::sleep(SHORT * 4);
            drop(s);
        });
        let err = probe(addr, SHORT).unwrap_err();
        assert!(matches!(err, ProbeError::Timeout { .. }), "{err:?}");
    }

    #[test]
    fn a_peer_that_drips_bytes_forever_still_times_out() {
        // Every read succeeds before its own timeout; only the shared deadline ends this.
        let addr = server(|mut s| {
            for _ in 0..100 {
                if s.write_all(b"H").is_err() {
                    return;
                }
                thread::sleep(SHORT / 10);
            }
        });
        let err = probe(addr, SHORT).unwrap_err();
        assert!(matches!(err, ProbeError::Timeout { .. }), "{err:?}");
    }

    #[test]
    fn garbage_is_not_http() {
        for answer in [
            &b"SSH-2.0-OpenSSH_9.2\r\n"[..],
            b"HTTP/1.1 abc\r\n\r\n",
            b"HTTP/2 200\r\n\r\n",
            b"",
        ] {
            let addr = answering(answer);
            let err = probe(addr, BUDGET).unwrap_err();
            assert!(
                matches!(err, ProbeError::NotHttp { .. }),
                "{answer:?}: {err:?}"
            );
        }
    }

    #[test]
    fn an_unspecified_listen_address_is_probed_on_loopback() {
        let v4: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let v6: SocketAddr = "[::]:8081".parse().unwrap();
        let set: SocketAddr = "10.1.2.3:9000".parse().unwrap();
        assert_eq!(target(v4), "127.0.0.1:8080".parse().unwrap());
        assert_eq!(target(v6), "[::1]:8081".parse().unwrap());
        assert_eq!(target(set), set);
    }
}
