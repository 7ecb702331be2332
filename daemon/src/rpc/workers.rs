//! Live worker connections and their in-flight calls.
//!
//! A worker is a client connection that registered functions. Calls to it
//! are `internal-rpc` frames on its outbound queue, answered by
//! `internal-answer` frames matched by `u`. When the connection goes away,
//! every call waiting on it fails at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use mpreg_client::protocol::{ErrorCode, InternalAnswer, InternalRpc, RpcError};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::session::{FrameKind, Outbound};

type Reply = Result<Value, RpcError>;

struct Worker {
    outbound: mpsc::Sender<Outbound>,
    frame: FrameKind,
    pending: HashMap<String, oneshot::Sender<Reply>>,
}

/// A call waiting for its worker; removes itself from the worker on drop.
struct PendingCall<'a> {
    workers: &'a Workers,
    provider: &'a str,
    u: String,
}

impl Drop for PendingCall<'_> {
    fn drop(&mut self) {
        if let Some(worker) = self.workers.lock().get_mut(self.provider) {
            worker.pending.remove(&self.u);
        }
    }
}

/// The workers connected to this node, by provider id.
#[derive(Default)]
pub struct Workers {
    workers: Mutex<HashMap<String, Worker>>,
    next_call: AtomicU64,
}

fn worker_gone(provider: &str) -> RpcError {
    RpcError::new(
        ErrorCode::ExecutionFailed,
        format!("worker {provider} disconnected before answering"),
    )
}

impl Workers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Worker>> {
        self.workers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes `provider` reachable through `outbound` (idempotent).
    pub fn connect(&self, provider: &str, outbound: mpsc::Sender<Outbound>, frame: FrameKind) {
        self.lock()
            .entry(provider.to_string())
            .or_insert_with(|| Worker {
                outbound,
                frame,
                pending: HashMap::new(),
            });
    }

    pub fn is_live(&self, provider: &str) -> bool {
        self.lock().contains_key(provider)
    }

    /// Forgets `provider`; every call waiting on it fails now.
    pub fn disconnect(&self, provider: &str) {
        if let Some(worker) = self.lock().remove(provider) {
            for (_, waiter) in worker.pending {
                let _ = waiter.send(Err(worker_gone(provider)));
            }
        }
    }

    /// Calls a function on a worker and waits for its answer.
    pub async fn call(
        &self,
        provider: &str,
        function: &mpreg_storage::views::FunctionRow,
        (args, kwargs): super::Arguments<'_>,
    ) -> Reply {
        let u = format!("call-{}", self.next_call.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = oneshot::channel();
        let (outbound, frame) = {
            let mut workers = self.lock();
            let worker = workers
                .get_mut(provider)
                .ok_or_else(|| worker_gone(provider))?;
            worker.pending.insert(u.clone(), tx);
            (worker.outbound.clone(), worker.frame)
        };
        // Forgets the call however this future ends (answer, error, or
        // dropped by the request timeout), so no entry outlives it.
        let _pending = PendingCall {
            workers: self,
            provider,
            u: u.clone(),
        };
        let message = InternalRpc {
            role: "internal-rpc",
            u: &u,
            command: &function.name,
            function_id: &function.function_id,
            version: &function.version,
            args,
            kwargs,
        };
        let json = serde_json::to_string(&message)
            .map_err(|e| RpcError::new(ErrorCode::ExecutionFailed, e.to_string()))?;
        if outbound.send(frame.message(json)).await.is_err() {
            self.disconnect(provider);
        }
        rx.await.unwrap_or_else(|_| Err(worker_gone(provider)))
    }

    /// Delivers a worker's answer to the call waiting for it.
    pub fn answer(&self, provider: &str, answer: InternalAnswer) {
        let waiter = self
            .lock()
            .get_mut(provider)
            .and_then(|w| w.pending.remove(&answer.u));
        let Some(waiter) = waiter else {
            tracing::debug!(provider, u = %answer.u, "answer for no pending call");
            return;
        };
        let reply = match answer.error {
            Some(error) => Err(RpcError::new(ErrorCode::ExecutionFailed, error)),
            None => Ok(answer.answer),
        };
        let _ = waiter.send(reply);
    }
}

#[cfg(test)]
mod test {
    use super::*;

    fn row() -> mpreg_storage::views::FunctionRow {
        mpreg_storage::views::FunctionRow {
            name: "slow".into(),
            function_id: "slow".into(),
            version: "1.0.0".into(),
            resources: vec![],
            provider: "w".into(),
            node_id: "n".into(),
            cluster_id: "c".into(),
            registered_at_ms: 0,
        }
    }

    #[tokio::test]
    async fn an_abandoned_call_leaves_nothing_pending() {
        let workers = Workers::default();
        let (outbound, mut frames) = mpsc::channel(8);
        workers.connect("w", outbound, FrameKind::Text);
        let function = row();
        let kwargs = serde_json::Map::new();
        let call = workers.call("w", &function, (&[], &kwargs));
        let abandoned = tokio::time::timeout(std::time::Duration::from_millis(20), call).await;
        assert!(abandoned.is_err(), "the worker never answered");
        assert!(frames.recv().await.is_some(), "the call was sent");
        assert!(workers.lock()["w"].pending.is_empty());
    }
}
