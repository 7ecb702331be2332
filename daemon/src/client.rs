//! The Rust client library: [`Client`] calls functions (one command or a
//! multi-command [`Request`]); [`Worker`] serves functions to a daemon.
//!
//! Both speak the same JSON protocol as MPREG clients, in binary WebSocket
//! frames, matching replies to requests by `u`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

use crate::protocol::{InternalAnswer, RpcCommand, RpcError, RpcRequest, RpcResponse};

/// What a client call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("failed to connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("the connection closed before the reply arrived")]
    Closed,
    #[error("{0}")]
    Rpc(RpcError),
    #[error("unexpected reply: {0}")]
    Protocol(String),
}

/// A function served by a [`Worker`]: positional and keyword arguments in,
/// a JSON result or an error text out.
pub type Handler =
    Arc<dyn Fn(Vec<Value>, Map<String, Value>) -> Result<Value, String> + Send + Sync>;

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<RpcResponse>>>>;
type Handlers = Arc<Mutex<HashMap<String, Handler>>>;

/// A multi-command request.
#[derive(Clone, Debug, Default)]
pub struct Request {
    cmds: Vec<RpcCommand>,
    intermediate_results: bool,
    execution_summary: bool,
}

impl Request {
    pub fn new() -> Self {
        Request::default()
    }

    /// Adds a command; a string argument equal to another command's name is
    /// replaced by that command's result.
    pub fn cmd(mut self, name: &str, fun: &str, args: Vec<Value>) -> Self {
        self.cmds.push(RpcCommand {
            name: name.into(),
            fun: fun.into(),
            args,
            ..RpcCommand::default()
        });
        self
    }

    /// Adds a fully specified command (kwargs, locs, version constraint...).
    pub fn command(mut self, cmd: RpcCommand) -> Self {
        self.cmds.push(cmd);
        self
    }

    /// Also return every level's results.
    pub fn intermediate_results(mut self, on: bool) -> Self {
        self.intermediate_results = on;
        self
    }

    /// Also return timings.
    pub fn execution_summary(mut self, on: bool) -> Self {
        self.execution_summary = on;
        self
    }
}

/// A connection to a daemon.
pub struct Client {
    outbound: mpsc::Sender<Message>,
    pending: Pending,
    handlers: Handlers,
    next_u: AtomicU64,
    prefix: String,
    /// Reader and writer tasks; aborted on drop, which closes the socket.
    io: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.io.iter().for_each(|task| task.abort());
    }
}

fn new_prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{:x}-{}", nanos, std::process::id())
}

async fn serve_call(handlers: Handlers, outbound: mpsc::Sender<Message>, frame: Value) {
    let u = frame["u"].as_str().unwrap_or_default().to_string();
    let command = frame["command"].as_str().unwrap_or_default().to_string();
    let args = frame["args"].as_array().cloned().unwrap_or_default();
    let kwargs = frame["kwargs"].as_object().cloned().unwrap_or_default();
    let handler = handlers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&command)
        .cloned();
    let answer = match handler {
        None => InternalAnswer {
            u,
            answer: Value::Null,
            error: Some(format!("this worker does not serve {command}")),
        },
        Some(handler) => match tokio::task::spawn_blocking(move || handler(args, kwargs)).await {
            Ok(Ok(value)) => InternalAnswer {
                u,
                answer: value,
                error: None,
            },
            Ok(Err(error)) => InternalAnswer {
                u,
                answer: Value::Null,
                error: Some(error),
            },
            Err(e) => InternalAnswer {
                u,
                answer: Value::Null,
                error: Some(format!("handler panicked: {e}")),
            },
        },
    };
    let mut frame = serde_json::to_value(&answer).unwrap_or(Value::Null);
    frame["role"] = json!("internal-answer");
    let _ = outbound
        .send(Message::binary(frame.to_string().into_bytes()))
        .await;
}

impl Client {
    /// Connects to a daemon's client URL (`ws://127.0.0.1:6666`).
    pub async fn connect(url: &str) -> Result<Client, ClientError> {
        let (ws, _) =
            tokio_tungstenite::connect_async(url)
                .await
                .map_err(|e| ClientError::Connect {
                    url: url.to_string(),
                    reason: e.to_string(),
                })?;
        let (mut sink, mut stream) = ws.split();
        let (outbound, mut queue) = mpsc::channel::<Message>(1024);
        let writer = tokio::spawn(async move {
            while let Some(message) = queue.recv().await {
                if sink.send(message).await.is_err() {
                    break;
                }
            }
        });
        let pending: Pending = Arc::default();
        let handlers: Handlers = Arc::default();
        let (reader_pending, reader_handlers, reader_out) =
            (pending.clone(), handlers.clone(), outbound.clone());
        let reader = tokio::spawn(async move {
            while let Some(Ok(message)) = stream.next().await {
                let bytes = match message {
                    Message::Text(t) => t.as_bytes().to_vec(),
                    Message::Binary(b) => b.to_vec(),
                    Message::Close(_) => break,
                    _ => continue,
                };
                let Ok(frame) = serde_json::from_slice::<Value>(&bytes) else {
                    continue;
                };
                if frame["role"] == "internal-rpc" {
                    tokio::spawn(serve_call(
                        reader_handlers.clone(),
                        reader_out.clone(),
                        frame,
                    ));
                    continue;
                }
                let Ok(response) = serde_json::from_value::<RpcResponse>(frame) else {
                    continue;
                };
                let waiter = response.u.as_ref().and_then(|u| {
                    reader_pending
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(u)
                });
                if let Some(waiter) = waiter {
                    let _ = waiter.send(response);
                }
            }
            reader_pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
        });
        Ok(Client {
            outbound,
            pending,
            handlers,
            next_u: AtomicU64::new(1),
            prefix: new_prefix(),
            io: vec![reader, writer],
        })
    }

    fn next_u(&self) -> String {
        format!(
            "{}-{}",
            self.prefix,
            self.next_u.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Sends one frame (which must carry `u`) and waits for its reply.
    async fn exchange(&self, u: String, frame: Value) -> Result<RpcResponse, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(u, tx);
        self.outbound
            .send(Message::binary(frame.to_string().into_bytes()))
            .await
            .map_err(|_| ClientError::Closed)?;
        rx.await.map_err(|_| ClientError::Closed)
    }

    /// Runs a multi-command request; returns the whole reply.
    pub async fn send(&self, request: Request) -> Result<RpcResponse, ClientError> {
        let u = self.next_u();
        let wire = RpcRequest {
            u: u.clone(),
            cmds: request.cmds,
            return_intermediate_results: request.intermediate_results,
            include_execution_summary: request.execution_summary,
            debug_mode: false,
        };
        let mut frame =
            serde_json::to_value(&wire).map_err(|e| ClientError::Protocol(e.to_string()))?;
        frame["role"] = json!("rpc");
        let response = self.exchange(u, frame).await?;
        match response.error {
            Some(error) => Err(ClientError::Rpc(error)),
            None => Ok(response),
        }
    }

    /// Runs a multi-command request; returns the last level's results.
    pub async fn request(&self, request: Request) -> Result<Map<String, Value>, ClientError> {
        match self.send(request).await?.r {
            Some(Value::Object(results)) => Ok(results),
            other => Err(ClientError::Protocol(format!(
                "r is not an object: {other:?}"
            ))),
        }
    }

    /// Calls one function and returns its result.
    pub async fn call(&self, fun: &str, args: Vec<Value>) -> Result<Value, ClientError> {
        let mut results = self.request(Request::new().cmd(fun, fun, args)).await?;
        results
            .remove(fun)
            .ok_or_else(|| ClientError::Protocol(format!("no result named {fun}")))
    }
}

/// A connection that serves functions to the daemon.
pub struct Worker {
    client: Client,
}

impl Worker {
    pub async fn connect(url: &str) -> Result<Worker, ClientError> {
        Ok(Worker {
            client: Client::connect(url).await?,
        })
    }

    /// Serves `name` at `version` (semver) with resource tags `resources`;
    /// returns once the registration is committed.
    pub async fn register(
        &self,
        name: &str,
        version: &str,
        resources: &[&str],
        handler: impl Fn(Vec<Value>, Map<String, Value>) -> Result<Value, String>
        + Send
        + Sync
        + 'static,
    ) -> Result<(), ClientError> {
        self.client
            .handlers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), Arc::new(handler));
        let u = self.client.next_u();
        let frame = json!({
            "role": "worker-register",
            "u": u,
            "functions": [{"name": name, "version": version, "resources": resources}],
        });
        let response = self.client.exchange(u, frame).await?;
        match response.error {
            Some(error) => Err(ClientError::Rpc(error)),
            None => Ok(()),
        }
    }

    /// The worker's connection, for calls.
    pub fn client(&self) -> &Client {
        &self.client
    }
}
