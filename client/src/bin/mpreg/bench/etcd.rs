//! The etcd side of `mpreg bench --system etcd`: puts and gets through
//! etcd's v3 JSON gateway (`POST /v3/kv/put`, `/v3/kv/range`), keys and
//! values base64 as the gateway wants them. HTTP/1.1 has one request in
//! flight per TCP connection, so `--inflight K` opens K connections per
//! `--conns`; the gateway's JSON costs etcd some time that its gRPC
//! clients do not pay, which the results name.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

pub struct Connection {
    http: reqwest::Client,
    base: String,
}

impl Connection {
    /// `base` is the client URL, e.g. `http://127.0.0.1:2379`.
    pub fn new(base: &str) -> Result<Connection, String> {
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .build()
            .map_err(|e| e.to_string())?;
        let base = if base.contains("://") {
            base.trim_end_matches('/').to_string()
        } else {
            format!("http://{base}")
        };
        Ok(Connection { http, base })
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value, String> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .map_err(|e| format!("etcd {path}: {e}"))?;
        let status = response.status();
        let reply: Value = response
            .json()
            .await
            .map_err(|e| format!("etcd {path}: {e}"))?;
        if status.is_success() {
            Ok(reply)
        } else {
            Err(format!("etcd {path}: HTTP {status}: {reply}"))
        }
    }

    pub async fn put(&self, key: &str, value: &[u8]) -> Result<(), String> {
        let body = json!({"key": STANDARD.encode(key), "value": STANDARD.encode(value)});
        self.post("/v3/kv/put", body).await.map(|_| ())
    }

    pub async fn get(&self, key: &str) -> Result<(), String> {
        let reply = self
            .post("/v3/kv/range", json!({"key": STANDARD.encode(key)}))
            .await?;
        match reply["kvs"].as_array() {
            Some(kvs) if !kvs.is_empty() => Ok(()),
            _ => Err(format!("{key} was not found")),
        }
    }
}
