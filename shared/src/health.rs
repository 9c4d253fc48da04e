//! `api healthcheck` / `worker healthcheck`: a tiny HTTP probe of the service's own `/readyz`,
//! so that container health checks work in a distroless image that has no curl.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// True when `GET /readyz` on `listen`'s port (on loopback) answers 200 within two seconds.
pub async fn probe(listen: SocketAddr) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], listen.port()));
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await?;
        Ok::<bool, std::io::Error>(head.starts_with(b"HTTP/1.1 200"))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), attempt).await,
        Ok(Ok(true))
    )
}

/// Runs the probe when the first argument is `healthcheck`; returns `None` otherwise.
pub fn run_if_requested(listen: impl FnOnce() -> SocketAddr) -> Option<std::process::ExitCode> {
    if std::env::args().nth(1).as_deref() != Some("healthcheck") {
        return None;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    let ok = rt.block_on(probe(listen()));
    Some(if ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}
