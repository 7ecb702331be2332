//! The Redis side of `mpreg bench --system redis`: commands in RESP over
//! one pipelined TCP connection. Redis answers in order, so each command
//! queues a waiter under the same lock that writes it, and one reader task
//! hands each reply to the oldest waiter.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::oneshot;

use super::lock;

/// A reply, as far as the bench needs to tell them apart.
#[derive(Debug)]
pub enum Reply {
    /// `+OK`, an integer, or a bulk string.
    Value,
    /// A null bulk string (GET of a missing key, LPOP of an empty list).
    Nil,
}

type Waiters = Mutex<VecDeque<oneshot::Sender<Result<Reply, String>>>>;

pub struct Connection {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    waiters: Arc<Waiters>,
}

impl Connection {
    pub async fn connect(addr: &str) -> Result<Connection, String> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect to redis at {addr}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let (read, write) = stream.into_split();
        let waiters = Arc::new(Mutex::new(VecDeque::new()));
        tokio::spawn(read_loop(BufReader::new(read), waiters.clone()));
        Ok(Connection {
            writer: tokio::sync::Mutex::new(write),
            waiters,
        })
    }

    /// Sends one command and waits for its reply; an error reply is `Err`.
    pub async fn command(&self, args: &[&[u8]]) -> Result<Reply, String> {
        let mut frame = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            frame.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            frame.extend_from_slice(arg);
            frame.extend_from_slice(b"\r\n");
        }
        let (tx, rx) = oneshot::channel();
        {
            let mut writer = self.writer.lock().await;
            lock(&self.waiters).push_back(tx);
            writer
                .write_all(&frame)
                .await
                .map_err(|e| format!("redis write: {e}"))?;
        }
        rx.await
            .map_err(|_| "the redis connection closed before the reply".to_string())?
    }
}

async fn read_loop(mut read: BufReader<OwnedReadHalf>, waiters: Arc<Waiters>) {
    while let Some(reply) = read_reply(&mut read).await {
        let Some(waiter) = lock(&waiters).pop_front() else {
            break;
        };
        let _ = waiter.send(reply);
    }
    lock(&waiters).clear();
}

/// Reads one reply; `None` when the connection ends or the reply is not
/// one the bench's commands get.
async fn read_reply(read: &mut BufReader<OwnedReadHalf>) -> Option<Result<Reply, String>> {
    let mut line = String::new();
    if read.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let line = line.trim_end();
    let (kind, rest) = line.split_at_checked(1)?;
    match kind {
        "+" | ":" => Some(Ok(Reply::Value)),
        "-" => Some(Err(format!("redis: {rest}"))),
        "$" => {
            let size: i64 = rest.parse().ok()?;
            let Ok(size) = usize::try_from(size) else {
                return Some(Ok(Reply::Nil));
            };
            let mut body = vec![0; size + 2];
            read.read_exact(&mut body).await.ok()?;
            Some(Ok(Reply::Value))
        }
        _ => None,
    }
}
