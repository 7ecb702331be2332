//! The PostgreSQL wire listener (`--pg-listen`) against the real `psql`
//! client and a Rust PostgreSQL driver (tokio-postgres, extended protocol
//! with bound parameters): the same tables, the same read-only guard and
//! limits as `/sql`, and credentials as logins.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use mpreg_tests::{Daemon, TestDir, output_within, sql_rows};
use serde_json::json;

/// Starts a daemon in `dir` with `config` (TOML, may be empty) and the
/// PostgreSQL listener on a free port; returns it and its `pg_url`.
fn start_with_pg(dir: &TestDir, config: &str) -> Result<(Daemon, String)> {
    let mut flags = dir.config(config);
    flags.extend(["--pg-listen".to_string(), "127.0.0.1:0".to_string()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let daemon = Daemon::start(dir, &flags)?;
    let pg = daemon
        .ready
        .pg_url
        .clone()
        .context("ready file has pg_url")?;
    Ok((daemon, pg))
}

/// Runs `psql` against `pg_url` with `args`; returns (success, stdout, stderr).
fn psql(
    pg_url: &str,
    user: &str,
    password: Option<&str>,
    args: &[&str],
) -> Result<(bool, String, String)> {
    psql_with(pg_url, user, password, &[], args)
}

/// [`psql`] with extra environment (`PGSSLMODE`, ...).
fn psql_with(
    pg_url: &str,
    user: &str,
    password: Option<&str>,
    env: &[(&str, &str)],
    args: &[&str],
) -> Result<(bool, String, String)> {
    let addr = pg_url.trim_start_matches("postgres://");
    let (host, port) = addr.rsplit_once(':').context("pg_url has a port")?;
    let mut cmd = Command::new("psql");
    cmd.args([
        "-h",
        host,
        "-p",
        port,
        "-U",
        user,
        "-d",
        "mpreg",
        "-X",
        "-w",
        "-v",
        "ON_ERROR_STOP=1",
    ])
    .args(args)
    .env_remove("PGPASSWORD")
    .env_remove("PGSSLMODE")
    .envs(env.iter().copied());
    if let Some(password) = password {
        cmd.env("PGPASSWORD", password);
    }
    let out = output_within(cmd, Duration::from_secs(30)).context(
        "psql (Debian package postgresql-client; scripts/setup --test-tools installs it)",
    )?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[test]
fn psql_reads_the_tables_and_is_refused_anything_else() -> Result<()> {
    let dir = TestDir::new();
    let (daemon, pg) = start_with_pg(&dir, "")?;

    let (ok, out, err) = psql(
        &pg,
        "anyone",
        None,
        &["-A", "-c", "SELECT dest, next_hop, hops FROM routes"],
    )?;
    ensure!(ok, "psql SELECT failed: {err}");
    ensure!(
        out.lines().collect::<Vec<_>>() == ["dest|next_hop|hops", "local|local|0", "(1 row)"],
        "{out}"
    );

    // psql's catalog commands read pg_catalog.
    let (ok, out, err) = psql(&pg, "anyone", None, &["-c", "\\dt"])?;
    ensure!(ok, "\\dt failed: {err}");
    for table in ["routes", "queues", "events", "raft", "cache_entries"] {
        ensure!(
            out.contains(&format!(" {table} ")),
            "\\dt lists no {table}: {out}"
        );
    }
    let (ok, out, err) = psql(&pg, "anyone", None, &["-c", "\\d routes"])?;
    ensure!(ok && out.contains("next_hop"), "\\d routes: {out} {err}");

    // Session statements drivers send are answered; writes are refused,
    // naming the statement, and change nothing.
    let (ok, _, err) = psql(
        &pg,
        "anyone",
        None,
        &[
            "-c",
            "SET application_name = 'report'",
            "-c",
            "BEGIN",
            "-c",
            "SELECT 1",
            "-c",
            "COMMIT",
        ],
    )?;
    ensure!(ok, "session statements: {err}");
    let digest = |daemon: &Daemon| -> Result<String> {
        let status = tokio::runtime::Runtime::new()?.block_on(daemon.status())?;
        Ok(status["views_digest"]
            .as_str()
            .context("views_digest")?
            .to_string())
    };
    let before = digest(&daemon)?;
    for statement in [
        "INSERT INTO routes VALUES ('x')",
        "CREATE TABLE t (a INT)",
        "DROP TABLE routes",
        "DELETE FROM queues",
        "COPY routes TO '/tmp/routes.csv'",
    ] {
        let (ok, _, err) = psql(&pg, "anyone", None, &["-c", statement])?;
        ensure!(!ok, "{statement} was not refused");
        ensure!(err.contains("read-only"), "{statement}: {err}");
    }
    let (ok, _, err) = psql(&pg, "anyone", None, &["-c", "SELECT * FROM no_such_table"])?;
    ensure!(!ok && err.contains("no_such_table"), "unknown table: {err}");
    ensure!(
        digest(&daemon)? == before,
        "a refused statement changed the views"
    );
    Ok(())
}

#[tokio::test]
async fn a_driver_binds_parameters_and_meets_the_same_limits() -> Result<()> {
    let dir = TestDir::new();
    let (daemon, pg) = start_with_pg(&dir, "sql_max_rows = 3\n")?;
    let (client, connection) =
        tokio_postgres::connect(&format!("{pg}/mpreg?user=driver"), tokio_postgres::NoTls).await?;
    tokio::spawn(connection);

    let rows = client
        .query("SELECT dest, hops FROM routes WHERE dest = $1", &[&"local"])
        .await?;
    ensure!(rows.len() == 1, "{rows:?}");
    let dest: String = rows[0].get(0);
    let hops: i64 = rows[0].get(1);
    ensure!((dest.as_str(), hops) == ("local", 0), "{dest} {hops}");
    let none = client
        .query("SELECT dest FROM routes WHERE dest = $1", &[&"elsewhere"])
        .await?;
    ensure!(none.is_empty());

    // The same numbers as /sql: count(*) of functions.
    let over_http = sql_rows(
        &daemon.ready.admin_url,
        "SELECT count(*) AS n FROM functions",
    )
    .await?;
    let n: i64 = client
        .query_one("SELECT count(*) AS n FROM functions", &[])
        .await?
        .get(0);
    ensure!(over_http == vec![json!({"n": n})], "{over_http:?} vs {n}");

    // sql_max_rows = 3 holds here too (there are more built-in functions).
    let err = client
        .query("SELECT name FROM functions", &[])
        .await
        .err()
        .context("a result over sql_max_rows was returned")?;
    let db = err.as_db_error().context("a database error")?;
    ensure!(db.code().code() == "54000", "{db:?}");
    ensure!(db.message().contains("sql_max_rows"), "{}", db.message());

    let err = client
        .execute("DELETE FROM queues WHERE name = $1", &[&"jobs"])
        .await
        .err()
        .context("DELETE ran")?;
    let db = err.as_db_error().context("a database error")?;
    ensure!(
        db.code().code() == "25006" && db.message().contains("read-only"),
        "{db:?}"
    );
    Ok(())
}

#[test]
fn with_credentials_only_a_credential_with_sql_logs_in() -> Result<()> {
    let dir = TestDir::new();
    let token = |name: &str, secret: &str| -> Result<String> {
        let path = dir.path().join(format!("{name}.token"));
        std::fs::write(&path, secret)?;
        Ok(path.display().to_string())
    };
    let config = format!(
        "[[credentials]]\nname = \"analyst\"\ntoken_file = {:?}\npermissions = {{ sql = true }}\n\n\
         [[credentials]]\nname = \"app\"\ntoken_file = {:?}\npermissions = {{ call = [\"echo\"] }}\n",
        token("analyst", "analyst-secret-0123456789")?,
        token("app", "app-secret-0123456789abcd")?,
    );
    let (_daemon, pg) = start_with_pg(&dir, &config)?;
    let query = [
        "-A",
        "-t",
        "-c",
        "SELECT name FROM credentials ORDER BY name",
    ];

    let (ok, out, err) = psql(&pg, "analyst", Some("analyst-secret-0123456789"), &query)?;
    ensure!(ok, "the analyst was refused: {err}");
    ensure!(
        out.lines().collect::<Vec<_>>() == ["analyst", "app"],
        "{out}"
    );

    let (ok, _, err) = psql(&pg, "analyst", None, &query)?;
    ensure!(!ok && err.contains("password"), "no password: {err}");
    let (ok, _, err) = psql(&pg, "analyst", Some("wrong-secret-0123456789ab"), &query)?;
    ensure!(
        !ok && err.contains("matches no credential"),
        "wrong password: {err}"
    );
    let (ok, _, err) = psql(&pg, "someone", Some("analyst-secret-0123456789"), &query)?;
    ensure!(
        !ok && err.contains("log in as analyst"),
        "another user name: {err}"
    );
    let (ok, _, err) = psql(&pg, "app", Some("app-secret-0123456789abcd"), &query)?;
    ensure!(
        !ok && err.contains("credential app may not"),
        "no sql permission: {err}"
    );
    Ok(())
}

#[test]
fn a_node_serving_tls_serves_psql_over_tls_only() -> Result<()> {
    let files = TestDir::new();
    let path = |name: &str| files.path().join(name);
    let ca = mpreg_tests::tls::TestCa::new("mpreg test CA")?;
    ca.write_ca(&path("ca.pem"))?;
    ca.issue(&path("cert.pem"), &path("key.pem"))?;
    let dir = TestDir::new();
    let config = format!(
        "tls_cert_file = {:?}\ntls_key_file = {:?}\ntls_ca_file = {:?}\n",
        path("cert.pem").display().to_string(),
        path("key.pem").display().to_string(),
        path("ca.pem").display().to_string(),
    );
    let (_daemon, pg) = start_with_pg(&dir, &config)?;
    let ca_file = path("ca.pem").display().to_string();
    let query = ["-A", "-t", "-c", "SELECT dest FROM routes"];

    let verified = [
        ("PGSSLMODE", "verify-full"),
        ("PGSSLROOTCERT", ca_file.as_str()),
    ];
    let (ok, out, err) = psql_with(&pg, "anyone", None, &verified, &query)?;
    ensure!(ok, "psql over verified TLS failed: {err}");
    ensure!(out.trim() == "local", "{out}");

    let (ok, _, err) = psql_with(&pg, "anyone", None, &[("PGSSLMODE", "disable")], &query)?;
    ensure!(!ok, "a plaintext session was served by a TLS node");
    ensure!(err.contains("TLS") || err.contains("SSL"), "{err}");
    Ok(())
}
