//! Ports and proxies: a server "goes down" when its proxy does, without touching the real one.

use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A port with nothing listening (yet).
pub async fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Forwards `127.0.0.1:port` to `upstream` until cut or taken down (or dropped).
pub async fn open_proxy(port: u16, upstream: String) -> Proxy {
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let links = Arc::new(Mutex::new(Vec::<tokio::task::AbortHandle>::new()));
    let frozen = CancellationToken::new();
    let (tracked, freeze) = (links.clone(), frozen.clone());
    let accept = tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            let (upstream, freeze) = (upstream.clone(), freeze.clone());
            let link = tokio::spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        // Both sockets stay open, and nothing crosses any more.
                        () = freeze.cancelled() => std::future::pending().await,
                    }
                }
            });
            tracked.lock().unwrap().push(link.abort_handle());
        }
    });
    Proxy {
        links,
        frozen,
        accept: accept.abort_handle(),
    }
}

/// A TCP forwarder in front of a real server whose connections the test can cut.
#[derive(Debug)]
pub struct Proxy {
    links: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    frozen: CancellationToken,
    accept: tokio::task::AbortHandle,
}

impl Proxy {
    /// Drops every connection through the proxy, as a server restart or a forced close does;
    /// returns how many there were. New connections are still forwarded.
    pub fn cut(&self) -> usize {
        let links: Vec<_> = self.links.lock().unwrap().drain(..).collect();
        links.iter().for_each(tokio::task::AbortHandle::abort);
        links.len()
    }

    /// The server stops answering without closing anything, as across a network partition:
    /// every connection stays open and no byte crosses it any more, either way.
    pub fn freeze(&self) {
        self.frozen.cancel();
    }

    /// The server is gone: connections cut, the port closed.
    pub fn down(&self) {
        self.accept.abort();
        self.cut();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.down();
    }
}
