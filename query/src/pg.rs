//! The PostgreSQL wire protocol (`--pg-listen`): `psql`, drivers and BI
//! tools query the same read-only tables as `/sql`, under the same guard
//! and limits.
//!
//! datafusion-postgres brings the protocol (pgwire), the `pg_catalog`
//! tables and functions that `psql`'s `\d` commands and drivers read, and
//! the Arrow to PostgreSQL encoding. This module decides what runs: a read
//! (`SELECT`, `EXPLAIN`, `SHOW TABLES`) is planned in a session that also
//! holds `pg_catalog` and runs through [`SqlEngine::run_plan`] (read-only
//! check, timeout, memory and row limits, concurrency); the session
//! statements drivers send (`SET` of a client setting, `SHOW`, `BEGIN`,
//! `COMMIT`, `ROLLBACK`) are answered by datafusion-postgres's hooks
//! without touching any table; every other `SET` is accepted and ignored
//! (it would change the session every connection shares); anything else
//! is refused with SQLSTATE 25006 naming the statement.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::common::ParamValues;
use datafusion::datasource::MemTable;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{Set, Statement};
use datafusion_postgres::DfSessionService;
use datafusion_postgres::arrow_pg::datatypes::df::{deserialize_parameters, encode_dataframe};
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::setup_pg_catalog;
use datafusion_postgres::datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use datafusion_postgres::hooks::QueryHook;
use datafusion_postgres::hooks::set_show::SetShowHook;
use datafusion_postgres::hooks::transactions::TransactionStatementHook;
use datafusion_postgres::pgwire::api::auth::{
    DefaultServerParameterProvider, StartupHandler, finish_authentication, protocol_negotiation,
    save_startup_parameters_to_metadata,
};
use datafusion_postgres::pgwire::api::portal::{Format, Portal};
use datafusion_postgres::pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use datafusion_postgres::pgwire::api::results::{QueryResponse, Response, Tag};
use datafusion_postgres::pgwire::api::store::PortalStore;
use datafusion_postgres::pgwire::api::{
    ClientInfo, ClientPortalStore, METADATA_USER, PgWireConnectionState, PgWireServerHandlers,
};
use datafusion_postgres::pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use datafusion_postgres::pgwire::messages::startup::Authentication;
use datafusion_postgres::pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use datafusion_postgres::pgwire::tokio::process_socket;
use datafusion_postgres::pgwire::types::format::FormatOptions;
use futures_util::{Sink, SinkExt};
use tokio::net::TcpListener;

pub use datafusion_postgres::pgwire::tokio::TlsAcceptor;

use crate::engine::{SqlEngine, SqlError};

/// Who may connect: the daemon answers with its credentials.
pub trait PgLogin: Send + Sync + 'static {
    /// Whether a password is asked for (with no credentials, any user and
    /// database name connect).
    fn required(&self) -> bool;
    /// Checks a user name and password; the error is sent to the client.
    fn check(&self, user: &str, password: &str) -> Result<(), String>;
}

/// Client settings a `SET` may change: they live in the connection's own
/// metadata, not in the shared session.
const CLIENT_SETTINGS: &[&str] = &[
    "statement_timeout",
    "datestyle",
    "bytea_output",
    "intervalstyle",
    "application_name",
    "extra_float_digits",
    "search_path",
];

/// Serves PostgreSQL clients on `listener` until `shutdown` completes;
/// connections still open then are closed.
pub async fn serve(
    listener: TcpListener,
    engine: Arc<SqlEngine>,
    login: Arc<dyn PgLogin>,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SqlError> {
    let handlers = Arc::new(Handlers::new(engine, login, tls.is_some())?);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    let handlers = handlers.clone();
                    let tls = tls.clone();
                    connections.spawn(async move {
                        if let Err(e) = process_socket(socket, tls, handlers).await {
                            tracing::debug!(%peer, error = %e, "PostgreSQL connection ended");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "PostgreSQL listener: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
    Ok(())
}

struct Handlers {
    queries: Arc<Queries>,
    startup: Arc<Startup>,
}

impl Handlers {
    fn new(
        engine: Arc<SqlEngine>,
        login: Arc<dyn PgLogin>,
        tls_only: bool,
    ) -> Result<Self, SqlError> {
        let session = Arc::new(engine.context()?);
        setup_pg_catalog(&session, "datafusion", EmptyContextProvider)
            .map_err(|e| SqlError::Internal(format!("pg_catalog: {e}")))?;
        let hooks: Vec<Arc<dyn QueryHook>> =
            vec![Arc::new(SetShowHook), Arc::new(TransactionStatementHook)];
        let sessions = Arc::new(DfSessionService::new_with_hooks(session.clone(), hooks));
        let mut parameters = DefaultServerParameterProvider::default();
        parameters.default_transaction_read_only = true;
        Ok(Handlers {
            queries: Arc::new(Queries {
                engine,
                session,
                sessions,
                parser: PostgresCompatibilityParser::new(),
            }),
            startup: Arc::new(Startup {
                login,
                parameters,
                tls_only,
            }),
        })
    }
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.queries.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.queries.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.startup.clone()
    }
}

/// Asks for a password when [`PgLogin::required`], then checks it.
struct Startup {
    login: Arc<dyn PgLogin>,
    parameters: DefaultServerParameterProvider,
    /// The node serves TLS: a session that did not negotiate it is refused
    /// (a password would cross in the clear).
    tls_only: bool,
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match message {
            PgWireFrontendMessage::Startup(_) if self.tls_only && !client.is_secure() => {
                return Err(pg_error(
                    "FATAL",
                    "28000",
                    "this node serves PostgreSQL over TLS only: connect with sslmode=require \
                     (or verify-full and the node's CA)"
                        .to_string(),
                ));
            }
            PgWireFrontendMessage::Startup(ref startup) => {
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                if self.login.required() {
                    client.set_state(PgWireConnectionState::AuthenticationInProgress);
                    client
                        .send(PgWireBackendMessage::Authentication(
                            Authentication::CleartextPassword,
                        ))
                        .await?;
                } else {
                    finish_authentication(client, &self.parameters).await?;
                }
            }
            PgWireFrontendMessage::PasswordMessageFamily(password) => {
                let password = password.into_password()?;
                let user = client
                    .metadata()
                    .get(METADATA_USER)
                    .cloned()
                    .unwrap_or_default();
                match self.login.check(&user, &password.password) {
                    Ok(()) => finish_authentication(client, &self.parameters).await?,
                    Err(message) => return Err(pg_error("FATAL", "28P01", message)),
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// What a statement is, for this listener.
enum Route {
    /// Planned and run through the engine.
    Read,
    /// Answered by datafusion-postgres's session hooks.
    Session,
    /// Accepted with this tag; changes nothing.
    Ignored(&'static str),
    /// Refused: not a read.
    Refused,
}

fn route(statement: &Statement) -> Route {
    match statement {
        Statement::Query(_)
        | Statement::Explain { .. }
        | Statement::ShowTables { .. }
        | Statement::ShowColumns { .. } => Route::Read,
        Statement::Set(Set::SingleAssignment {
            scope: None,
            hivevar: false,
            variable,
            ..
        }) if CLIENT_SETTINGS.contains(&variable.to_string().to_lowercase().as_str()) => {
            Route::Session
        }
        Statement::Set(_) => Route::Ignored("SET"),
        Statement::ShowVariable { .. }
        | Statement::ShowStatus { .. }
        | Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. } => Route::Session,
        _ => Route::Refused,
    }
}

fn refused(statement: &Statement) -> PgWireError {
    let text = statement.to_string();
    let verb: String = text
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    pg_error(
        "ERROR",
        "25006",
        SqlError::Refused(format!("{verb} is not a read")).to_string(),
    )
}

fn pg_error(severity: &str, code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        severity.to_string(),
        code.to_string(),
        message,
    )))
}

/// The SQLSTATE of an engine error.
fn sql_error(e: SqlError) -> PgWireError {
    let code = match &e {
        SqlError::Refused(_) => "25006",
        SqlError::Invalid(_) => "42000",
        SqlError::Timeout(_) => "57014",
        SqlError::MemoryLimit { .. } => "53200",
        SqlError::RowLimit(_) => "54000",
        SqlError::Busy(_) => "53300",
        SqlError::Internal(_) => "XX000",
    };
    pg_error("ERROR", code, e.to_string())
}

fn invalid(e: impl std::fmt::Display) -> PgWireError {
    pg_error("ERROR", "42000", e.to_string())
}

struct Queries {
    engine: Arc<SqlEngine>,
    /// Where statements are planned: the tables and `pg_catalog`.
    session: Arc<SessionContext>,
    /// datafusion-postgres's service, for session statements and the
    /// extended protocol's parse and describe steps.
    sessions: Arc<DfSessionService>,
    parser: PostgresCompatibilityParser,
}

impl Queries {
    /// Runs `plan` through the engine and encodes its rows in `format`.
    async fn read(
        &self,
        plan: LogicalPlan,
        format: &Format,
        options: FormatOptions,
    ) -> PgWireResult<QueryResponse> {
        let output = self.engine.run_plan(plan).await.map_err(sql_error)?;
        let rows = MemTable::try_new(output.schema, vec![output.batches]).map_err(invalid)?;
        let frame = self.session.read_table(Arc::new(rows)).map_err(invalid)?;
        encode_dataframe(frame, format, Some(Arc::new(options))).await
    }
}

#[async_trait]
impl SimpleQueryHandler for Queries {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let statements = self.parser.parse(query).map_err(invalid)?;
        if statements.is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        let mut responses = Vec::new();
        for statement in statements {
            match route(&statement) {
                Route::Read => {
                    let plan = self
                        .session
                        .state()
                        .statement_to_plan(DfStatement::Statement(Box::new(statement)))
                        .await
                        .map_err(invalid)?;
                    let options = FormatOptions::from_client_metadata(client.metadata());
                    let rows = self.read(plan, &Format::UnifiedText, options).await?;
                    responses.push(Response::Query(rows));
                }
                Route::Session => {
                    let answered = SimpleQueryHandler::do_query(
                        &*self.sessions,
                        client,
                        &statement.to_string(),
                    )
                    .await?;
                    responses.extend(answered);
                }
                Route::Ignored(tag) => responses.push(Response::Execution(Tag::new(tag))),
                Route::Refused => return Err(refused(&statement)),
            }
        }
        Ok(responses)
    }
}

#[async_trait]
impl ExtendedQueryHandler for Queries {
    type Statement = <DfSessionService as ExtendedQueryHandler>::Statement;
    type QueryParser = <DfSessionService as ExtendedQueryHandler>::QueryParser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        self.sessions.query_parser()
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Self::Statement>,
        max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let Some((statement, plan)) = &portal.statement.statement.1 else {
            return Ok(Response::EmptyQuery);
        };
        match route(statement) {
            Route::Read => {
                let params = parameters(portal, plan)?;
                let plan = plan
                    .clone()
                    .replace_params_with_values(&params)
                    .map_err(invalid)?;
                let options = FormatOptions::from_client_metadata(client.metadata());
                let rows = self
                    .read(plan, &portal.result_column_format, options)
                    .await?;
                Ok(Response::Query(rows))
            }
            Route::Session => {
                ExtendedQueryHandler::do_query(&*self.sessions, client, portal, max_rows).await
            }
            Route::Ignored(tag) => Ok(Response::Execution(Tag::new(tag))),
            Route::Refused => Err(refused(statement)),
        }
    }
}

/// The values bound to `$1`, `$2`, ... of `plan`.
fn parameters(
    portal: &Portal<<Queries as ExtendedQueryHandler>::Statement>,
    plan: &LogicalPlan,
) -> PgWireResult<ParamValues> {
    let mut types: Vec<(usize, Option<datafusion::arrow::datatypes::DataType>)> = plan
        .get_parameter_types()
        .map_err(invalid)?
        .into_iter()
        .filter_map(|(name, ty)| name.trim_start_matches('$').parse().ok().map(|n| (n, ty)))
        .collect();
    types.sort_by_key(|(n, _)| *n);
    let types: Vec<_> = types.iter().map(|(_, ty)| ty.as_ref()).collect();
    deserialize_parameters(portal, &types)
}
