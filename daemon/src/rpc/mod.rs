//! RPC: runs multi-command requests in dependency order against built-in
//! functions and worker-provided functions.
//!
//! [`Rpc`] is the entry type: [`Rpc::handle`] plans the request (refusing
//! cycles before anything runs), checks that every function exists, then
//! runs level by level with all commands of a level in parallel, under one
//! whole-request timeout. A command no provider here serves runs in the
//! cluster that does, reached along the federation's routes
//! ([`federated`]).

mod builtins;
mod federated;
mod plan;
mod select;
mod workers;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use mpreg_client::protocol::{
    ErrorCode, ExecutionSummary, IntermediateResult, RpcCommand, RpcError, RpcRequest, RpcResponse,
    WorkerFunction, WorkerWithdrawal,
};
use mpreg_storage::EventKind;
use mpreg_storage::views::FunctionRow;
use serde_json::{Map, Value};

use crate::clock::now_secs;
use crate::cluster::Node;
use crate::cluster::peer::PeerError;
use crate::config::RpcLimits;
use crate::envelope::{PeerReply, PeerRequest};
use crate::federation::Federation;
use crate::metrics::RpcMetrics;
use crate::queue::{self, Queues};
pub use builtins::is_queue_function;
use federated::Place;
pub use plan::{Plan, plan, substitute};
use select::Selector;
pub use workers::Workers;

/// The RPC engine of a node.
pub struct Rpc {
    node: Arc<Node>,
    workers: Workers,
    selector: Selector,
    limits: RpcLimits,
    metrics: RpcMetrics,
    /// Serves the `mpreg.queue.*` built-ins.
    queues: Arc<Queues>,
    /// Carries calls to other clusters.
    federation: Arc<Federation>,
}

/// Counts a request in flight for as long as it lives.
struct InFlight(prometheus::IntGauge);

impl InFlight {
    fn new(gauge: &prometheus::IntGauge) -> Self {
        gauge.inc();
        InFlight(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The `outcome` label of an answered request.
fn request_outcome(response: &RpcResponse) -> &'static str {
    match &response.error {
        None => "ok",
        Some(e) if e.code == ErrorCode::Timeout.code() => "timeout",
        Some(e) if e.code == ErrorCode::ExecutionFailed.code() => "error",
        Some(_) => "refused",
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A call's positional and keyword arguments.
type Arguments<'a> = (&'a [Value], &'a Map<String, Value>);

/// Arguments as the JSON text a call to another node or cluster carries.
fn json_text(arguments: &(impl serde::Serialize + ?Sized)) -> Result<String, RpcError> {
    serde_json::to_string(arguments).map_err(|e| {
        RpcError::new(
            ErrorCode::ExecutionFailed,
            format!("arguments cannot be written as JSON: {e}"),
        )
    })
}

/// What running the levels produced.
struct Run {
    last_level: Map<String, Value>,
    intermediate: Vec<IntermediateResult>,
    level_times: Vec<f64>,
}

impl Rpc {
    /// Starts the engine: registers the built-ins that are missing and
    /// withdraws worker registrations left by connections of a previous run.
    pub async fn start(
        node: Arc<Node>,
        limits: RpcLimits,
        metrics: RpcMetrics,
        queues: Arc<Queues>,
        federation: Arc<Federation>,
    ) -> crate::Result<Rpc> {
        let (stale, missing) = {
            let catalog = node.views().catalog();
            let me = &node.identity().node_id;
            let stale: Vec<FunctionRow> = catalog
                .functions()
                .filter(|f| &f.node_id == me && f.provider != builtins::PROVIDER)
                .cloned()
                .collect();
            let missing: Vec<&str> = builtins::NAMES
                .into_iter()
                .chain(queue::FUNCTIONS)
                .filter(|name| {
                    !catalog
                        .functions_named(name)
                        .any(|f| f.provider == builtins::PROVIDER)
                })
                .collect();
            (stale, missing)
        };
        for f in stale {
            node.propose_ok(EventKind::FunctionWithdrawn {
                name: f.name,
                version: f.version,
                provider: f.provider,
            })
            .await?;
        }
        for name in missing {
            node.propose_ok(EventKind::FunctionRegistered {
                name: name.to_string(),
                function_id: if name.starts_with("mpreg.") {
                    name.to_string()
                } else {
                    format!("mpreg.system.{name}")
                },
                version: builtins::VERSION.to_string(),
                resources: Vec::new(),
                provider: builtins::PROVIDER.to_string(),
                node_id: node.identity().node_id.clone(),
                cluster_id: node.identity().cluster_id.clone(),
            })
            .await?;
        }
        Ok(Rpc {
            node,
            workers: Workers::default(),
            selector: Selector::default(),
            limits,
            metrics,
            queues,
            federation,
        })
    }

    pub fn workers(&self) -> &Workers {
        &self.workers
    }

    /// Id of the node this engine runs on.
    pub fn node_id(&self) -> &str {
        &self.node.identity().node_id
    }

    /// Whether a registration can serve a call: a built-in, a worker
    /// connected here, or a worker of another member of the cluster.
    fn is_live(&self, row: &FunctionRow) -> bool {
        if row.provider == builtins::PROVIDER {
            return true;
        }
        if row.node_id == self.node.identity().node_id {
            return self.workers.is_live(&row.provider);
        }
        self.node.member_addr_of(&row.node_id).is_some()
    }

    /// Runs a call another node routed here, for a worker connected to
    /// this node; arguments and result travel as JSON text.
    pub async fn call_forwarded(
        &self,
        function: &FunctionRow,
        (args, kwargs): (&str, &str),
        timeout: Duration,
    ) -> Result<String, RpcError> {
        let bad = |what: &str, e: serde_json::Error| {
            RpcError::new(
                ErrorCode::ExecutionFailed,
                format!("forwarded {what} are not JSON: {e}"),
            )
        };
        let args: Vec<Value> = serde_json::from_str(args).map_err(|e| bad("arguments", e))?;
        let kwargs: Map<String, Value> =
            serde_json::from_str(kwargs).map_err(|e| bad("keyword arguments", e))?;
        let _pending = InFlight::new(&self.metrics.worker_calls_in_flight);
        let call = self
            .workers
            .call(&function.provider, function, (&args, &kwargs));
        // Past the caller's deadline nobody waits for the answer: the call
        // is dropped here, and the worker's late answer is discarded.
        let result = tokio::time::timeout(timeout, call).await.map_err(|_| {
            RpcError::new(
                ErrorCode::Timeout,
                format!(
                    "dropped {}: the caller's deadline ({} ms) passed before worker {} answered",
                    function.name,
                    timeout.as_millis(),
                    function.provider
                ),
            )
        })??;
        Ok(result.to_string())
    }

    /// Sends a call to the node whose worker provides `function`.
    async fn call_remote(
        &self,
        function: &FunctionRow,
        (args, kwargs): Arguments<'_>,
        deadline: tokio::time::Instant,
    ) -> Result<Value, RpcError> {
        let failed = |e: String| RpcError::new(ErrorCode::ExecutionFailed, e);
        let addr = self
            .node
            .member_addr_of(&function.node_id)
            .ok_or_else(|| failed(format!("node {} is not a member", function.node_id)))?;
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let request = PeerRequest::Call {
            function: function.clone(),
            args: json_text(args)?,
            kwargs: json_text(kwargs)?,
            timeout_ms: u64::try_from(remaining.as_millis()).unwrap_or(u64::MAX),
        };
        match self.node.peers().request(&addr, request, remaining).await {
            Ok(PeerReply::Called(Ok(json))) => serde_json::from_str(&json)
                .map_err(|e| failed(format!("node {} answered bad JSON: {e}", function.node_id))),
            Ok(PeerReply::Called(Err(e))) => Err(e),
            Ok(other) => Err(failed(format!(
                "node {} answered {other:?}",
                function.node_id
            ))),
            Err(e @ PeerError::Timeout { .. }) => Err(RpcError::new(
                ErrorCode::Timeout,
                format!("node {}: {e}", function.node_id),
            )),
            Err(e) => Err(failed(format!("routing to node {}: {e}", function.node_id))),
        }
    }

    /// Answers one `rpc` request; never fails, errors are in the response.
    #[tracing::instrument(level = "debug", name = "request", skip_all, fields(u = %request.u))]
    pub async fn handle(&self, request: RpcRequest) -> RpcResponse {
        let _in_flight = InFlight::new(&self.metrics.requests_in_flight);
        let timer = self.metrics.request_seconds.start_timer();
        let response = self.answer(request).await;
        timer.observe_duration();
        self.metrics
            .requests
            .with_label_values(&[request_outcome(&response)])
            .inc();
        response
    }

    async fn answer(&self, request: RpcRequest) -> RpcResponse {
        let u = request.u.clone();
        if request.cmds.len() > self.limits.max_commands {
            let details = format!(
                "{} commands in one request; the limit is {}",
                request.cmds.len(),
                self.limits.max_commands
            );
            return RpcResponse::error(Some(u), RpcError::new(ErrorCode::BadRequest, details));
        }
        let plan = match plan(&request.cmds) {
            Ok(plan) => plan,
            Err(e) => return RpcResponse::error(Some(u), e),
        };
        let cross_cluster_hops = match self.check_functions(&request.cmds) {
            Ok(hops) => hops,
            Err(e) => return RpcResponse::error(Some(u), e),
        };
        self.metrics
            .request_levels
            .observe(plan.levels.len() as f64);
        let start = Instant::now();
        let deadline = tokio::time::Instant::now() + self.limits.request_timeout;
        let run = match tokio::time::timeout_at(deadline, self.run(&request, &plan, deadline)).await
        {
            Ok(Ok(run)) => run,
            Ok(Err(e)) => return RpcResponse::error(Some(u), e),
            Err(_) => {
                let details = format!(
                    "RPC execution timed out after {:.1} seconds",
                    self.limits.request_timeout.as_secs_f64()
                );
                return RpcResponse::error(Some(u), RpcError::new(ErrorCode::Timeout, details));
            }
        };
        let mut response = RpcResponse::ok(u.clone(), Value::Object(run.last_level));
        if request.return_intermediate_results {
            response.intermediate_results = run.intermediate;
        }
        if request.include_execution_summary {
            let (bottleneck, _) =
                run.level_times
                    .iter()
                    .enumerate()
                    .fold(
                        (0, f64::MIN),
                        |best, (i, &t)| if t > best.1 { (i, t) } else { best },
                    );
            response.execution_summary = Some(ExecutionSummary {
                request_id: u,
                total_execution_time_ms: ms(start.elapsed()),
                total_levels: plan.levels.len(),
                bottleneck_level_index: bottleneck,
                average_level_time_ms: run.level_times.iter().sum::<f64>()
                    / run.level_times.len().max(1) as f64,
                level_execution_times: run.level_times,
                parallel_commands_executed: request.cmds.len(),
                cross_cluster_hops,
            });
        }
        response
    }

    /// Refuses the request before anything runs if a function is unknown
    /// here and in every cluster this one has a route to; else the cluster
    /// hops its commands will cross (one way, by the routes of now).
    fn check_functions(&self, cmds: &[RpcCommand]) -> Result<usize, RpcError> {
        let mut hops = 0;
        for cmd in cmds {
            if let Place::Cluster(cluster) = self.place(cmd)? {
                hops += self.federation.route_hops(&cluster).unwrap_or(0) as usize;
            }
        }
        Ok(hops)
    }

    async fn run(
        &self,
        request: &RpcRequest,
        plan: &Plan,
        deadline: tokio::time::Instant,
    ) -> Result<Run, RpcError> {
        // Results later levels may reference; the last level's go straight
        // into the reply, and `accumulated` is kept only when asked for.
        let mut results: HashMap<String, Value> = HashMap::new();
        let mut accumulated = Map::new();
        let mut intermediate = Vec::new();
        let mut level_times = Vec::new();
        let mut last_level = Map::new();
        for (level_index, level) in plan.levels.iter().enumerate() {
            let started = Instant::now();
            let calls = level
                .iter()
                .map(|&i| self.run_command(&request.cmds[i], &results, deadline));
            let outputs = join_all(calls).await;
            last_level = Map::new();
            for (&i, output) in level.iter().zip(outputs) {
                last_level.insert(request.cmds[i].name.clone(), output?);
            }
            let elapsed = ms(started.elapsed());
            level_times.push(elapsed);
            if request.return_intermediate_results {
                accumulated.extend(last_level.clone());
                intermediate.push(IntermediateResult {
                    request_id: request.u.clone(),
                    level_index,
                    level_results: last_level.clone(),
                    accumulated_results: accumulated.clone(),
                    total_levels: plan.levels.len(),
                    completed_levels: level_index + 1,
                    timestamp: now_secs(),
                    execution_time_ms: elapsed,
                });
            }
            if level_index + 1 < plan.levels.len() {
                results.extend(last_level.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
        }
        Ok(Run {
            last_level,
            intermediate,
            level_times,
        })
    }

    /// Runs one command with the results it references put in its
    /// arguments; a command of the first level references none, and its
    /// arguments are passed as they came.
    async fn run_command(
        &self,
        cmd: &RpcCommand,
        results: &HashMap<String, Value>,
        deadline: tokio::time::Instant,
    ) -> Result<Value, RpcError> {
        let result = if results.is_empty() {
            self.call(cmd, (&cmd.args, &cmd.kwargs), deadline).await
        } else {
            let args: Vec<Value> = cmd.args.iter().map(|a| substitute(a, results)).collect();
            let kwargs: Map<String, Value> = cmd
                .kwargs
                .iter()
                .map(|(k, v)| (k.clone(), substitute(v, results)))
                .collect();
            self.call(cmd, (&args, &kwargs), deadline).await
        };
        let outcome = if result.is_ok() { "ok" } else { "error" };
        let function = self.metrics.functions.admit(&cmd.fun);
        self.metrics
            .calls
            .with_label_values(&[function, outcome])
            .inc();
        result
    }

    /// Runs one function call where [`Rpc::place`] says, here on the
    /// provider the selector picks.
    async fn call(
        &self,
        cmd: &RpcCommand,
        (args, kwargs): Arguments<'_>,
        deadline: tokio::time::Instant,
    ) -> Result<Value, RpcError> {
        // The calls that leave this node or touch the log are boxed: a
        // future is as large as its largest await, and every built-in and
        // worker call would otherwise carry and move their state.
        if let Place::Cluster(cluster) = self.place(cmd)? {
            return Box::pin(self.call_cluster(&cluster, cmd, (args, kwargs), deadline)).await;
        }
        let function = {
            let catalog = self.node.views().catalog();
            self.selector.select(&catalog, cmd, |f| self.is_live(f))?
        };
        let failed = |e: String| {
            RpcError::new(
                ErrorCode::ExecutionFailed,
                format!("{} ({}): {e}", cmd.name, cmd.fun),
            )
        };
        if function.provider == builtins::PROVIDER
            && queue::FUNCTIONS.contains(&function.name.as_str())
        {
            Ok(Box::pin(self.queues.call(&function.name, args, kwargs)).await)
        } else if function.provider == builtins::PROVIDER {
            builtins::call(&self.node, &function.name, args, kwargs).map_err(failed)
        } else if function.node_id != self.node.identity().node_id {
            Box::pin(self.call_remote(&function, (args, kwargs), deadline))
                .await
                .map_err(|e| {
                    if e.code == ErrorCode::Timeout.code() {
                        e
                    } else {
                        failed(e.details.unwrap_or(e.message))
                    }
                })
        } else {
            let _pending = InFlight::new(&self.metrics.worker_calls_in_flight);
            self.workers
                .call(&function.provider, &function, (args, kwargs))
                .await
                .map_err(|e| failed(e.details.unwrap_or(e.message)))
        }
    }

    /// Registers functions served by worker `provider`; returns what was registered.
    pub async fn register(
        &self,
        provider: &str,
        functions: Vec<WorkerFunction>,
    ) -> Result<Value, RpcError> {
        let mut registered = Vec::new();
        for f in functions {
            let version = f.version.unwrap_or_else(|| "1.0.0".to_string());
            if let Err(e) = semver::Version::parse(&version) {
                return Err(RpcError::new(
                    ErrorCode::BadRequest,
                    format!("function {} has invalid version {version:?}: {e}", f.name),
                ));
            }
            if builtins::is_reserved(&f.name) {
                return Err(RpcError::new(
                    ErrorCode::BadRequest,
                    format!("{} is a built-in function and cannot be registered", f.name),
                ));
            }
            let function_id = f.function_id.unwrap_or_else(|| f.name.clone());
            self.node
                .propose_ok(EventKind::FunctionRegistered {
                    name: f.name.clone(),
                    function_id: function_id.clone(),
                    version: version.clone(),
                    resources: f.resources.clone(),
                    provider: provider.to_string(),
                    node_id: self.node.identity().node_id.clone(),
                    cluster_id: self.node.identity().cluster_id.clone(),
                })
                .await
                .map_err(|e| RpcError::new(ErrorCode::BadRequest, e.to_string()))?;
            registered.push(serde_json::json!({
                "name": f.name, "function_id": function_id, "version": version, "resources": f.resources,
            }));
        }
        Ok(serde_json::json!({"provider": provider, "registered": registered}))
    }

    /// Withdraws functions of `provider`; `None` version = every version.
    pub async fn withdraw(
        &self,
        provider: &str,
        functions: &[WorkerWithdrawal],
    ) -> Result<Value, RpcError> {
        let rows: Vec<FunctionRow> = {
            let catalog = self.node.views().catalog();
            catalog
                .functions()
                .filter(|r| r.provider == provider)
                .filter(|r| {
                    functions.iter().any(|w| {
                        w.name == r.name && w.version.as_ref().is_none_or(|v| *v == r.version)
                    })
                })
                .cloned()
                .collect()
        };
        let mut withdrawn = Vec::new();
        for row in rows {
            self.node
                .propose_ok(EventKind::FunctionWithdrawn {
                    name: row.name.clone(),
                    version: row.version.clone(),
                    provider: row.provider,
                })
                .await
                .map_err(|e| RpcError::new(ErrorCode::ExecutionFailed, e.to_string()))?;
            withdrawn.push(serde_json::json!({"name": row.name, "version": row.version}));
        }
        Ok(serde_json::json!({"withdrawn": withdrawn}))
    }

    /// A worker connection closed: its calls fail now, its functions go.
    pub async fn worker_gone(&self, provider: &str) {
        self.workers.disconnect(provider);
        let all: Vec<WorkerWithdrawal> = {
            let catalog = self.node.views().catalog();
            catalog
                .functions()
                .filter(|r| r.provider == provider)
                .map(|r| WorkerWithdrawal {
                    name: r.name.clone(),
                    version: Some(r.version.clone()),
                })
                .collect()
        };
        if let Err(e) = self.withdraw(provider, &all).await {
            tracing::warn!(provider, error = %e, "failed to withdraw functions of a closed worker");
        }
    }
}
