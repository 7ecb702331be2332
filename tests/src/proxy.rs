//! A TCP proxy in front of one node's peer listener, for partitions: it
//! reads who is calling from the WebSocket request line
//! (`GET /peer?from=<node id>`) and refuses or cuts the links of blocked
//! callers. Only loopback addresses are used. Over TLS the request line
//! is encrypted: links are relayed, but not blocked by caller.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

#[derive(Default)]
struct State {
    target: Option<SocketAddr>,
    blocked: HashSet<String>,
    /// Open links by caller, so blocking a caller cuts them.
    links: HashMap<String, Vec<AbortHandle>>,
}

/// A running proxy; stops when dropped.
pub struct Proxy {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    accept: AbortHandle,
}

/// The caller named in a request line such as `GET /peer?from=n1 HTTP/1.1`.
fn caller(request_line: &str) -> String {
    request_line
        .split_whitespace()
        .nth(1)
        .and_then(|path| path.split_once("from="))
        .map(|(_, rest)| rest.split('&').next().unwrap_or_default().to_string())
        .unwrap_or_default()
}

impl Proxy {
    /// Listens on a free loopback port; forwards nowhere until
    /// [`Proxy::set_target`].
    pub async fn start() -> Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state: Arc<Mutex<State>> = Arc::default();
        let accept_state = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(relay(stream, accept_state.clone()));
            }
        })
        .abort_handle();
        Ok(Proxy {
            addr,
            state,
            accept,
        })
    }

    /// `ws://` URL of the proxy (what the node advertises).
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    pub fn set_target(&self, target: SocketAddr) {
        self.state.lock().unwrap().target = Some(target);
    }

    /// Refuses new links from `caller` and cuts the open ones.
    pub fn block(&self, caller: &str) {
        let mut state = self.state.lock().unwrap();
        state.blocked.insert(caller.to_string());
        for link in state.links.remove(caller).unwrap_or_default() {
            link.abort();
        }
    }

    pub fn unblock_all(&self) {
        self.state.lock().unwrap().blocked.clear();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        let mut state = self.state.lock().unwrap();
        for link in state.links.drain().flat_map(|(_, links)| links) {
            link.abort();
        }
    }
}

async fn relay(mut inbound: TcpStream, state: Arc<Mutex<State>>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    // A TLS record (0x16, a ClientHello) hides the request line: the link
    // is relayed without a caller, so it cannot be blocked by name.
    while head.first() != Some(&0x16) && !head.windows(2).any(|w| w == b"\r\n") {
        match inbound.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 8192 {
            return;
        }
    }
    let who = caller(&String::from_utf8_lossy(&head));
    let target = {
        let state = state.lock().unwrap();
        if state.blocked.contains(&who) {
            return;
        }
        state.target
    };
    let Some(target) = target else { return };
    let Ok(mut outbound) = TcpStream::connect(target).await else {
        return;
    };
    if outbound.write_all(&head).await.is_err() {
        return;
    }
    let link = tokio::spawn(async move {
        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
    });
    let mut state = state.lock().unwrap();
    if state.blocked.contains(&who) {
        link.abort();
        return;
    }
    let links = state.links.entry(who).or_default();
    links.retain(|l| !l.is_finished());
    links.push(link.abort_handle());
}

#[cfg(test)]
mod test {
    #[test]
    fn caller_is_read_from_the_request_line() {
        assert_eq!(super::caller("GET /peer?from=n1 HTTP/1.1\r\n"), "n1");
        assert_eq!(super::caller("GET /peer?from=n2&x=1 HTTP/1.1"), "n2");
        assert_eq!(super::caller("GET / HTTP/1.1"), "");
    }
}
