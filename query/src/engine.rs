//! The SQL session: registers the tables, refuses everything that is not a
//! read, and runs each query on a runtime of its own under a timeout, a
//! memory pool and a row limit.
//!
//! Queries run on a dedicated tokio runtime so a heavy query competes with
//! other queries, not with raft, RPC and pub/sub on the node's runtime.

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use futures_util::StreamExt;
use mpreg_storage::Inspector;

use crate::tables::{
    CacheTierSource, InspectTable, LinkStateSource, RaftSource, RouteExplain, Sources, TableId,
};

/// Limits every query runs under; each is a config key of the daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SqlLimits {
    /// `sql_timeout_ms`: a query running longer is cancelled.
    pub timeout: Duration,
    /// `sql_memory_limit_bytes`: memory one query's operators may hold
    /// (sorts, aggregations, joins); nothing spills to disk.
    pub memory_limit_bytes: usize,
    /// `sql_max_rows`: a result with more rows is refused.
    pub max_rows: usize,
    /// `sql_max_concurrent`: queries running at once; one more is refused
    /// at once ([`SqlError::Busy`]), not queued.
    pub max_concurrent: usize,
}

impl Default for SqlLimits {
    fn default() -> Self {
        SqlLimits {
            timeout: Duration::from_secs(10),
            memory_limit_bytes: 256 << 20,
            max_rows: 100_000,
            max_concurrent: 4,
        }
    }
}

/// Why a query gave no result.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// A statement that is not a read (DDL, DML, COPY, SET, ...).
    #[error("refused: the SQL surface is read-only ({0})")]
    Refused(String),
    /// Bad SQL, an unknown table or column, a type error: DataFusion's message.
    #[error("{0}")]
    Invalid(String),
    #[error("query cancelled: it ran longer than the timeout of {0} ms (sql_timeout_ms)")]
    Timeout(u128),
    #[error(
        "query cancelled: it needed more than the memory limit of {limit} bytes (sql_memory_limit_bytes): {detail}"
    )]
    MemoryLimit { limit: usize, detail: String },
    #[error(
        "query cancelled: the result has more than {0} rows (sql_max_rows); add a LIMIT or aggregate"
    )]
    RowLimit(usize),
    #[error(
        "too many SQL queries: {0} are running (sql_max_concurrent); try again when one has finished"
    )]
    Busy(usize),
    #[error("internal error while running the query: {0}")]
    Internal(String),
}

impl SqlError {
    /// Short machine-readable name of the error class.
    pub fn kind(&self) -> &'static str {
        match self {
            SqlError::Refused(_) => "refused",
            SqlError::Invalid(_) => "invalid",
            SqlError::Timeout(_) => "timeout",
            SqlError::MemoryLimit { .. } => "memory_limit",
            SqlError::RowLimit(_) => "row_limit",
            SqlError::Busy(_) => "busy",
            SqlError::Internal(_) => "internal",
        }
    }

    /// Whether the query (not the node) is at fault.
    pub fn is_client_error(&self) -> bool {
        !matches!(self, SqlError::Internal(_) | SqlError::Busy(_))
    }
}

/// The rows of one query.
#[derive(Clone, Debug)]
pub struct QueryOutput {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

impl QueryOutput {
    pub fn num_rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }
}

/// Puts the calling thread (every thread of the SQL runtime: its workers,
/// the blocking threads that scan RocksDB and their helpers) in Linux's
/// `SCHED_IDLE` class: it runs only on a CPU no other thread of the node
/// wants, and a thread that wakes (raft, clients, apply) takes the CPU
/// from it at once, so a scan does not raise their latency. At nice 19
/// instead, two scan threads still got enough slices to double the p99 of
/// durable writes. The class belongs to the thread; the node's other
/// threads keep theirs.
pub(crate) fn lowest_cpu_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler reads `param` during the call only; pid 0
    // is the calling thread.
    let failed = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0;
    if failed {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "cannot lower the CPU priority of a SQL thread; queries compete with writes"
        );
    }
}

/// Shuts its runtime down without blocking, wherever it is dropped.
struct QueryRuntime(Option<tokio::runtime::Runtime>);

impl Drop for QueryRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Aborts a spawned query when the caller stops waiting for it.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs read-only SQL over one node's tables.
pub struct SqlEngine {
    sources: Arc<Sources>,
    limits: SqlLimits,
    /// One permit per query running (`limits.max_concurrent`).
    running: Arc<tokio::sync::Semaphore>,
    runtime: QueryRuntime,
}

impl SqlEngine {
    /// An engine over `inspector`'s database, with `raft` answering the
    /// `raft` table and `cache` the memory tier columns of `cache_entries`.
    pub fn new(
        inspector: Inspector,
        raft: Arc<dyn RaftSource>,
        cache: Arc<dyn CacheTierSource>,
        limits: SqlLimits,
    ) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("mpreg-sql")
            .on_thread_start(lowest_cpu_priority)
            .enable_time()
            .build()?;
        Ok(SqlEngine {
            sources: Arc::new(Sources {
                inspector,
                raft,
                cache,
                links: std::sync::OnceLock::new(),
            }),
            running: Arc::new(tokio::sync::Semaphore::new(limits.max_concurrent)),
            limits,
            runtime: QueryRuntime(Some(runtime)),
        })
    }

    /// Sets where the live columns of `federation_links` come from (state,
    /// round trip, last seen, counters); until then every link is
    /// `unknown`. Only the first call counts: it returns whether this
    /// `source` was taken.
    pub fn set_link_states(&self, source: Arc<dyn LinkStateSource>) -> bool {
        self.sources.links.set(source).is_ok()
    }

    pub fn limits(&self) -> &SqlLimits {
        &self.limits
    }

    /// Names of the tables, in the order `SHOW TABLES` lists ours.
    pub fn table_names() -> impl Iterator<Item = &'static str> {
        TableId::ALL.into_iter().map(TableId::name)
    }

    /// Names of the table functions (`SELECT * FROM route_explain('c3')`).
    pub fn table_function_names() -> impl Iterator<Item = &'static str> {
        [crate::tables::ROUTE_EXPLAIN].into_iter()
    }

    /// A session with every table and table function registered, under
    /// the memory limit.
    pub(crate) fn context(&self) -> Result<SessionContext, SqlError> {
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(self.limits.memory_limit_bytes, 1.0)
            .with_disk_manager_builder(
                DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
            )
            .build_arc()
            .map_err(|e| SqlError::Internal(e.to_string()))?;
        let config = SessionConfig::new().with_information_schema(true);
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(runtime)
            .with_default_features()
            .build();
        let ctx = SessionContext::new_with_state(state);
        for id in TableId::ALL {
            ctx.register_table(
                id.name(),
                Arc::new(InspectTable::new(id, self.sources.clone())),
            )
            .map_err(|e| SqlError::Internal(e.to_string()))?;
        }
        ctx.register_udtf(
            crate::tables::ROUTE_EXPLAIN,
            Arc::new(RouteExplain::new(self.sources.clone())),
        );
        Ok(ctx)
    }

    /// Stops the SQL runtime, waiting up to `timeout` for scans still
    /// running. A process about to exit calls this: a scan left running
    /// reads RocksDB while the process tears it down (and aborts with
    /// "pthread lock: Invalid argument").
    pub fn shutdown(mut self, timeout: std::time::Duration) {
        if let Some(runtime) = self.runtime.0.take() {
            runtime.shutdown_timeout(timeout);
        }
    }

    /// Runs one SQL statement and returns all its rows.
    pub async fn query(&self, sql: &str) -> Result<QueryOutput, SqlError> {
        let sql = sql.to_string();
        self.limited(move |ctx, limits| async move {
            if is_transaction(&ctx, &sql) {
                return Err(SqlError::Refused(format!(
                    "transactions are not supported: {}",
                    sql.trim()
                )));
            }
            let plan = ctx
                .state()
                .create_logical_plan(&sql)
                .await
                .map_err(|e| classify(e, &limits))?;
            execute(ctx, plan, &limits).await
        })
        .await
    }

    /// Runs `plan` (made by the PostgreSQL listener in a session of its
    /// own) under the same read-only check and limits as [`Self::query`].
    pub(crate) async fn run_plan(&self, plan: LogicalPlan) -> Result<QueryOutput, SqlError> {
        self.limited(move |ctx, limits| async move { execute(ctx, plan, &limits).await })
            .await
    }

    /// Runs `work` on the SQL runtime in a fresh session, holding one of
    /// `max_concurrent` permits, cancelled after the timeout or when the
    /// caller stops waiting.
    async fn limited<F, Fut>(&self, work: F) -> Result<QueryOutput, SqlError>
    where
        F: FnOnce(SessionContext, SqlLimits) -> Fut,
        Fut: Future<Output = Result<QueryOutput, SqlError>> + Send + 'static,
    {
        let permit = self
            .running
            .clone()
            .try_acquire_owned()
            .map_err(|_| SqlError::Busy(self.limits.max_concurrent))?;
        let ctx = self.context()?;
        let limits = self.limits.clone();
        let timeout = limits.timeout;
        let runtime = self
            .runtime
            .0
            .as_ref()
            .ok_or_else(|| SqlError::Internal("the SQL runtime is shut down".to_string()))?;
        let running = work(ctx, limits);
        let task = runtime.spawn(async move {
            let _running = permit;
            tokio::time::timeout(timeout, running)
                .await
                .unwrap_or(Err(SqlError::Timeout(timeout.as_millis())))
        });
        let _abort = AbortOnDrop(task.abort_handle());
        task.await
            .map_err(|e| SqlError::Internal(format!("query task failed: {e}")))?
    }
}

fn classify(e: DataFusionError, limits: &SqlLimits) -> SqlError {
    match e.find_root() {
        DataFusionError::ResourcesExhausted(detail) => SqlError::MemoryLimit {
            limit: limits.memory_limit_bytes,
            detail: detail.clone(),
        },
        DataFusionError::Internal(_)
        | DataFusionError::External(_)
        | DataFusionError::IoError(_) => SqlError::Internal(e.to_string()),
        _ => SqlError::Invalid(e.to_string()),
    }
}

/// Whether `sql` is a transaction statement (`BEGIN`, `START TRANSACTION`,
/// `COMMIT`, `ROLLBACK`, savepoints). DataFusion answers these "not
/// implemented" before the read-only check could refuse them; docs/sql.md
/// lists transactions as refused.
fn is_transaction(ctx: &SessionContext, sql: &str) -> bool {
    use datafusion::sql::parser::Statement as DfStatement;
    use datafusion::sql::sqlparser::ast::Statement;
    let state = ctx.state();
    let dialect = state.config().options().sql_parser.dialect;
    match state.sql_to_statement(sql, &dialect) {
        Ok(DfStatement::Statement(statement)) => matches!(
            *statement,
            Statement::StartTransaction { .. }
                | Statement::Commit { .. }
                | Statement::Rollback { .. }
                | Statement::Savepoint { .. }
                | Statement::ReleaseSavepoint { .. }
        ),
        _ => false,
    }
}

/// Refuses `plan` unless it only reads, then runs it in `ctx` and collects
/// at most `limits.max_rows` rows.
async fn execute(
    ctx: SessionContext,
    plan: LogicalPlan,
    limits: &SqlLimits,
) -> Result<QueryOutput, SqlError> {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
        .verify_plan(&plan)
        .map_err(|e| SqlError::Refused(e.to_string()))?;
    let frame = ctx
        .execute_logical_plan(plan)
        .await
        .map_err(|e| classify(e, limits))?;
    let schema: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
    let mut stream = frame
        .execute_stream()
        .await
        .map_err(|e| classify(e, limits))?;
    let mut batches = Vec::new();
    let mut rows = 0usize;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|e| classify(e, limits))?;
        rows += batch.num_rows();
        if rows > limits.max_rows {
            return Err(SqlError::RowLimit(limits.max_rows));
        }
        batches.push(batch);
    }
    Ok(QueryOutput { schema, batches })
}
