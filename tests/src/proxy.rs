//! A TCP proxy in front of one node's peer listener, for partitions and
//! slow links: it reads who is calling from the WebSocket request line
//! (`GET /peer?from=<node id>`) and refuses or cuts the links of blocked
//! callers, and holds what it relays as [`LinkFaults`] say. Only loopback
//! addresses are used. Over TLS the request line is encrypted: links are
//! relayed, but not blocked by caller.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::Instant;

/// How a link delays what it relays, both ways. Bytes keep their order: a
/// chunk is delivered `delay` plus up to `jitter` after it was read, never
/// before the chunk ahead of it. A packet lost on a TCP link is felt as a
/// stall until it is sent again: `stall_per_mille` of the chunks are held
/// 200 ms more (Linux's minimum retransmission timeout), and everything
/// behind them waits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkFaults {
    pub delay: Duration,
    pub jitter: Duration,
    pub stall_per_mille: u32,
}

const STALL: Duration = Duration::from_millis(200);

impl LinkFaults {
    /// How long to hold one chunk; `dice` is a random number.
    fn hold(&self, dice: u64) -> Duration {
        let jitter_ns = u64::try_from(self.jitter.as_nanos()).unwrap_or(u64::MAX);
        let jitter = Duration::from_nanos(dice.checked_rem(jitter_ns + 1).unwrap_or(0));
        let stalled = (dice >> 32) % 1000 < u64::from(self.stall_per_mille);
        self.delay + jitter + if stalled { STALL } else { Duration::ZERO }
    }
}

#[derive(Default)]
struct State {
    target: Option<SocketAddr>,
    faults: LinkFaults,
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

    /// Delays what every link relays from now on (open links included).
    pub fn set_faults(&self, faults: LinkFaults) {
        self.state.lock().unwrap().faults = faults;
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
    let faults = state.clone();
    let link = tokio::spawn(async move {
        let (in_read, in_write) = inbound.into_split();
        let (out_read, out_write) = outbound.into_split();
        tokio::join!(
            pipe(in_read, out_write, faults.clone()),
            pipe(out_read, in_write, faults)
        );
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

/// Relays one direction of a link, holding each chunk as the proxy's
/// faults say: a reader stamps each chunk with its delivery time, a writer
/// delivers it then.
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, state: Arc<Mutex<State>>) {
    let (chunks, mut due) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let read = async move {
        let mut dice = 0x2545_F491_4F6C_DD1D_u64 ^ u64::from(std::process::id());
        let mut last = Instant::now();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            dice ^= dice << 13;
            dice ^= dice >> 7;
            dice ^= dice << 17;
            let hold = state.lock().unwrap().faults.hold(dice);
            last = last.max(Instant::now() + hold);
            if chunks.send((last, buf[..n].to_vec())).is_err() {
                break;
            }
        }
    };
    let write = async move {
        while let Some((at, bytes)) = due.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(read, write);
}

#[cfg(test)]
mod test {
    #[test]
    fn caller_is_read_from_the_request_line() {
        assert_eq!(super::caller("GET /peer?from=n1 HTTP/1.1\r\n"), "n1");
        assert_eq!(super::caller("GET /peer?from=n2&x=1 HTTP/1.1"), "n2");
        assert_eq!(super::caller("GET / HTTP/1.1"), "");
    }

    #[test]
    fn a_chunk_is_held_the_delay_plus_jitter_and_sometimes_a_stall() {
        use super::{LinkFaults, STALL};
        use std::time::Duration;
        let faults = LinkFaults {
            delay: Duration::from_millis(10),
            jitter: Duration::from_millis(5),
            stall_per_mille: 100,
        };
        let holds: Vec<Duration> = (1..=10_000u64)
            .map(|i| faults.hold(i.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
            .collect();
        let stalls = holds.iter().filter(|h| **h >= STALL).count();
        assert!((700..1300).contains(&stalls), "{stalls} stalls in 10,000");
        for hold in holds {
            let base = if hold >= STALL { hold - STALL } else { hold };
            assert!(
                base >= faults.delay && base <= faults.delay + faults.jitter,
                "{hold:?}"
            );
        }
        assert_eq!(LinkFaults::default().hold(12345), Duration::ZERO);
    }
}
