//! The NATS side of `mpreg bench --system nats`: just enough of the NATS
//! core protocol (INFO, CONNECT, PING/PONG, SUB, PUB, MSG) to publish,
//! subscribe and make requests, so the same load generator drives NATS and
//! mpreg. Requests get their replies on a per-connection inbox; messages on
//! other subjects go to the connection's message channel (a subscriber
//! reads them, a responder answers them). A subscription is live when
//! `subscribe` returns: it waits for the PONG of a PING sent after it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};

use super::lock;

/// How long a request waits for its reply.
const REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A message on a subject other than the connection's inbox.
pub struct Message {
    pub reply: Option<String>,
    pub payload: Vec<u8>,
}

/// Replies awaited on the inbox, by request number.
type Pending = Mutex<HashMap<u64, oneshot::Sender<Vec<u8>>>>;

/// One NATS connection; its reader task runs until the server closes it.
pub struct Connection {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    inbox: String,
    next_request: AtomicU64,
    pending: Arc<Pending>,
    /// Who waits for the PONG of each PING sent, oldest first.
    pongs: Mutex<VecDeque<oneshot::Sender<()>>>,
}

impl Connection {
    /// Connects to `addr` (host:port) and returns the connection and its
    /// channel of messages that are not replies to its requests.
    pub async fn connect(addr: &str) -> Result<(Arc<Connection>, mpsc::Receiver<Message>), String> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect to nats at {addr}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let (read, mut write) = stream.into_split();
        let mut read = BufReader::new(read);
        let mut line = String::new();
        read.read_line(&mut line)
            .await
            .map_err(|e| format!("nats at {addr}: {e}"))?;
        if !line.starts_with("INFO ") {
            return Err(format!("nats at {addr} did not greet with INFO: {line:?}"));
        }
        write
            .write_all(
                b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":false}\r\nPING\r\n",
            )
            .await
            .map_err(|e| e.to_string())?;
        loop {
            line.clear();
            if read.read_line(&mut line).await.map_err(|e| e.to_string())? == 0 {
                return Err(format!(
                    "nats at {addr} closed the connection after CONNECT"
                ));
            }
            match line.trim_end() {
                "PONG" => break,
                l if l.starts_with("-ERR") => return Err(format!("nats at {addr}: {l}")),
                _ => {}
            }
        }
        static INBOXES: AtomicU64 = AtomicU64::new(0);
        let inbox = format!(
            "_INBOX.mpreg-bench.{}.{}",
            std::process::id(),
            INBOXES.fetch_add(1, Ordering::Relaxed)
        );
        let connection = Arc::new(Connection {
            writer: tokio::sync::Mutex::new(write),
            inbox,
            next_request: AtomicU64::new(0),
            pending: Arc::new(Mutex::new(HashMap::new())),
            pongs: Mutex::new(VecDeque::new()),
        });
        let (messages, receiver) = mpsc::channel(65_536);
        tokio::spawn(read_loop(
            read,
            connection.clone(),
            connection.inbox.clone(),
            messages,
        ));
        connection
            .subscribe(&format!("{}.*", connection.inbox), 1)
            .await?;
        Ok((connection, receiver))
    }

    async fn send(&self, bytes: &[u8]) -> Result<(), String> {
        let mut writer = self.writer.lock().await;
        writer
            .write_all(bytes)
            .await
            .map_err(|e| format!("nats write: {e}"))
    }

    /// Subscribes `subject` under subscription id `sid`; returns once the
    /// server has it (a message published after this reaches it).
    pub async fn subscribe(&self, subject: &str, sid: u32) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        {
            let mut writer = self.writer.lock().await;
            lock(&self.pongs).push_back(tx);
            writer
                .write_all(format!("SUB {subject} {sid}\r\nPING\r\n").as_bytes())
                .await
                .map_err(|e| format!("nats write: {e}"))?;
        }
        rx.await
            .map_err(|_| format!("the nats connection closed before SUB {subject} took"))
    }

    /// Publishes `payload` on `subject`, with a reply subject if given.
    pub async fn publish(
        &self,
        subject: &str,
        reply: Option<&str>,
        payload: &[u8],
    ) -> Result<(), String> {
        let head = match reply {
            Some(reply) => format!("PUB {subject} {reply} {}\r\n", payload.len()),
            None => format!("PUB {subject} {}\r\n", payload.len()),
        };
        let mut frame = Vec::with_capacity(head.len() + payload.len() + 2);
        frame.extend_from_slice(head.as_bytes());
        frame.extend_from_slice(payload);
        frame.extend_from_slice(b"\r\n");
        self.send(&frame).await
    }

    /// Publishes `payload` on `subject` and waits for the first reply.
    pub async fn request(&self, subject: &str, payload: &[u8]) -> Result<Vec<u8>, String> {
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id, tx);
        let reply = format!("{}.{id}", self.inbox);
        if let Err(e) = self.publish(subject, Some(&reply), payload).await {
            lock(&self.pending).remove(&id);
            return Err(e);
        }
        // Core NATS delivers at most once: a lost reply is an error, not a
        // hang.
        match tokio::time::timeout(REPLY_TIMEOUT, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err("the nats connection closed before the reply".into()),
            Err(_) => {
                lock(&self.pending).remove(&id);
                Err(format!("no reply on {subject} in {REPLY_TIMEOUT:?}"))
            }
        }
    }
}

/// Reads the server's lines until it closes: replies go to their
/// requests, PINGs are answered, other messages go to `messages`.
async fn read_loop(
    mut read: BufReader<OwnedReadHalf>,
    connection: Arc<Connection>,
    inbox: String,
    messages: mpsc::Sender<Message>,
) {
    let mut line = String::new();
    loop {
        line.clear();
        match read.read_line(&mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let words: Vec<&str> = line.split_ascii_whitespace().collect();
        match words.first().copied() {
            Some("MSG") => {
                // MSG <subject> <sid> [reply-to] <#bytes>
                let (subject, reply, size) = match words[..] {
                    [_, subject, _, size] => (subject, None, size),
                    [_, subject, _, reply, size] => (subject, Some(reply.to_string()), size),
                    _ => break,
                };
                let Ok(size) = size.parse::<usize>() else {
                    break;
                };
                let mut payload = vec![0; size + 2];
                if read.read_exact(&mut payload).await.is_err() {
                    break;
                }
                payload.truncate(size);
                let request = subject
                    .strip_prefix(inbox.as_str())
                    .and_then(|rest| rest.strip_prefix('.'))
                    .and_then(|id| id.parse::<u64>().ok());
                if let Some(id) = request {
                    if let Some(waiter) = lock(&connection.pending).remove(&id) {
                        let _ = waiter.send(payload);
                    }
                } else {
                    // Nobody reads the channel of a pure publisher: drop.
                    let _ = messages.send(Message { reply, payload }).await;
                }
            }
            Some("PONG") => {
                let waiter = lock(&connection.pongs).pop_front();
                if let Some(waiter) = waiter {
                    let _ = waiter.send(());
                }
            }
            Some("PING") => {
                let answered = connection.send(b"PONG\r\n").await;
                if answered.is_err() {
                    break;
                }
            }
            // The bench has no logger; a server error is worth seeing.
            Some("-ERR") => eprintln!("nats: {}", line.trim_end()),
            _ => {}
        }
    }
    lock(&connection.pending).clear();
    lock(&connection.pongs).clear();
}
