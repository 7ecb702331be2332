//! The README, run as a user runs it: its first command starts the daemon,
//! then every `$ ` line of its `sh` blocks runs in order, in a fresh
//! directory, and what it prints is checked against the lines the README
//! shows under it. A README change that breaks a command fails here.
//!
//! What is substituted, and nothing else:
//! - `cargo run --release -p P --` becomes the built binary of package `P`
//!   (so that package must name exactly one binary, or a `default-run`), and
//!   `mpreg`/`mpreg-daemon` are the built binaries (first on `PATH`);
//! - every `127.0.0.1:PORT` (port not 0) becomes a free port, the same one
//!   for the same `PORT` throughout; the defaults 6666 and 6670, which the
//!   run command and the tour leave implicit, reach the binaries through
//!   `MPREG_LISTEN`, `MPREG_ADMIN_LISTEN`, `MPREG_URL` and `MPREG_ADMIN`;
//! - `./scripts/setup` and `./scripts/test` are not run (the test command
//!   runs the first itself and is the second); they must exist.
//!
//! A line ending in `&` runs in the background until the end (or until a
//! `<!-- readme-test: stop -->` comment, which stops, with SIGTERM, every
//! background command started so far). A command whose output does not
//! match yet is run again, as a user would, until [`PATIENCE`] runs out:
//! nodes need a moment to start, join and learn routes.
//!
//! Matching, per command: README output that is one JSON document must be
//! the same shape (same keys, array lengths, value types; strings and
//! numbers equal except ids and counters, see [`same_json`]); a table
//! (`+---`) must have the same header and first column; other lines must
//! appear in order (a JSON line may come from a background command, such
//! as a subscriber), and `...` ends the comparison. Ids (six or more hex
//! digits in a row) are compared as ids, not by value.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use mpreg_tests::{cli_bin, output_within};
use serde_json::Value;

/// How long a command may keep failing before the test fails.
const PATIENCE: Duration = Duration::from_secs(60);
/// How long one run of one command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// JSON keys whose values vary from run to run (counters, request ids):
/// only their type is compared.
const VARYING: &[&str] = &[
    "u",
    "leader",
    "last_applied",
    "last_log_index",
    "events",
    "snapshot_index",
    "purged_index",
    "revision",
    "expires_at_ms",
    "enqueued_at_ms",
    "created_at_ms",
];

const STOP_DIRECTIVE: &str = "<!-- readme-test: stop -->";

/// One step of the README.
#[derive(Debug)]
enum Step {
    /// A block without `$ ` lines: commands shown, not a session.
    Plain(Vec<String>),
    /// A `$ ` line and the output lines under it.
    Run {
        line: usize,
        command: String,
        expected: Vec<String>,
    },
    /// `<!-- readme-test: stop -->`.
    Stop,
}

fn steps(readme: &str) -> Result<Vec<Step>> {
    let mut steps = Vec::new();
    let mut block: Option<Vec<(usize, String)>> = None;
    for (index, line) in readme.lines().enumerate() {
        let number = index + 1;
        match &mut block {
            None if line.trim() == STOP_DIRECTIVE => steps.push(Step::Stop),
            None if line.starts_with("```sh") => block = Some(Vec::new()),
            None => {}
            Some(lines) if line.starts_with("```") => {
                let lines = std::mem::take(lines);
                block = None;
                if !lines.iter().any(|(_, l)| l.starts_with("$ ")) {
                    steps.push(Step::Plain(lines.into_iter().map(|(_, l)| l).collect()));
                    continue;
                }
                for (number, line) in lines {
                    match line.strip_prefix("$ ") {
                        Some(command) => steps.push(Step::Run {
                            line: number,
                            command: command.to_string(),
                            expected: Vec::new(),
                        }),
                        None => match steps.last_mut() {
                            Some(Step::Run { expected, .. }) => expected.push(line),
                            _ => bail!("README line {number}: output before any `$ ` line"),
                        },
                    }
                }
            }
            Some(lines) => lines.push((number, line.to_string())),
        }
    }
    ensure!(block.is_none(), "README ends inside a code block");
    Ok(steps)
}

/// The repository root.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The binary `cargo run -p package` runs, or why cargo could not pick one.
fn binary_of(package: &str) -> Result<String> {
    for member in ["client", "daemon", "storage", "query", "tests"] {
        let manifest_path = repo().join(member).join("Cargo.toml");
        let manifest: toml::Table = std::fs::read_to_string(&manifest_path)?.parse()?;
        let name = manifest
            .get("package")
            .and_then(|p| p.get("name"))
            .and_then(|n| n.as_str());
        if name != Some(package) {
            continue;
        }
        if let Some(default) = manifest["package"]
            .get("default-run")
            .and_then(|d| d.as_str())
        {
            return Ok(default.to_string());
        }
        let mut bins: Vec<String> = manifest
            .get("bin")
            .and_then(|b| b.as_array())
            .into_iter()
            .flatten()
            .filter_map(|b| b.get("name").and_then(|n| n.as_str()).map(str::to_string))
            .collect();
        if repo().join(member).join("src/main.rs").exists() {
            bins.push(package.to_string());
        }
        if let Ok(entries) = std::fs::read_dir(repo().join(member).join("src/bin")) {
            for entry in entries.flatten() {
                if let Some(stem) = entry.path().file_stem().and_then(|s| s.to_str()) {
                    bins.push(stem.to_string());
                }
            }
        }
        bins.sort();
        bins.dedup();
        return match bins.as_slice() {
            [one] => Ok(one.clone()),
            _ => bail!(
                "`cargo run -p {package}` could not determine which binary to run: \
                 {bins:?} (give the package a default-run)"
            ),
        };
    }
    bail!("no workspace package named {package}")
}

/// A README session: its directory, ports and background commands.
struct Session {
    dir: tempfile::TempDir,
    bin_dir: PathBuf,
    ports: HashMap<u16, u16>,
    background: Vec<Background>,
}

struct Background {
    line: usize,
    command: String,
    child: Child,
    output: PathBuf,
}

impl Session {
    fn new() -> Result<Session> {
        let dir = tempfile::tempdir()?;
        let examples = dir.path().join("examples");
        std::fs::create_dir(&examples)?;
        for entry in std::fs::read_dir(repo().join("examples"))? {
            let entry = entry?;
            std::fs::copy(entry.path(), examples.join(entry.file_name()))?;
        }
        let bin_dir = cli_bin().parent().expect("target/<profile>").to_path_buf();
        Ok(Session {
            dir,
            bin_dir,
            ports: HashMap::new(),
            background: Vec::new(),
        })
    }

    /// The free port standing in for the README's `port`.
    fn port(&mut self, port: u16) -> Result<u16> {
        if let Some(&mapped) = self.ports.get(&port) {
            return Ok(mapped);
        }
        let mapped = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        self.ports.insert(port, mapped);
        Ok(mapped)
    }

    /// `command` with the substitutions of this module's doc.
    fn rewrite(&mut self, command: &str) -> Result<String> {
        let mut text = command.to_string();
        while let Some(start) = text.find("cargo run --release -p ") {
            let rest = &text[start + "cargo run --release -p ".len()..];
            let package = rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
            let after = &rest[package.len()..];
            let after = after
                .strip_prefix(" --")
                .with_context(|| format!("`{command}`: no `--` after the package"))?;
            let binary = self.bin_dir.join(binary_of(&package)?);
            text = format!("{}{}{}", &text[..start], binary.display(), after);
        }
        let mut out = String::new();
        let mut rest = text.as_str();
        while let Some(at) = rest.find("127.0.0.1:") {
            let (before, after) = rest.split_at(at + "127.0.0.1:".len());
            out.push_str(before);
            let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
            match digits.parse::<u16>() {
                Ok(port) if port != 0 => out.push_str(&self.port(port)?.to_string()),
                _ => out.push_str(&digits),
            }
            rest = &after[digits.len()..];
        }
        out.push_str(rest);
        Ok(out)
    }

    fn shell(&mut self, command: &str) -> Result<Command> {
        let path = format!(
            "{}:{}",
            self.bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let listen = format!("127.0.0.1:{}", self.port(6666)?);
        let admin = format!("127.0.0.1:{}", self.port(6670)?);
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg(command)
            .current_dir(self.dir.path())
            .env("PATH", path)
            .env("MPREG_URL", format!("ws://{listen}"))
            .env("MPREG_ADMIN", format!("http://{admin}"))
            .env("MPREG_LISTEN", listen)
            .env("MPREG_ADMIN_LISTEN", admin)
            .stdin(Stdio::null())
            .process_group(0);
        Ok(cmd)
    }

    fn start(&mut self, line: usize, command: &str) -> Result<()> {
        let output = self.dir.path().join(format!(".background-{line}.out"));
        let file = std::fs::File::create(&output)?;
        let child = self
            .shell(command)?
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("README line {line}: start `{command}`"))?;
        self.background.push(Background {
            line,
            command: command.to_string(),
            child,
            output,
        });
        Ok(())
    }

    /// What every background command has printed so far.
    fn background_output(&self) -> String {
        let mut all = String::new();
        for job in &self.background {
            if let Ok(mut file) = std::fs::File::open(&job.output) {
                let _ = file.read_to_string(&mut all);
            }
        }
        all
    }

    fn describe_background(&self) -> String {
        self.background
            .iter()
            .map(|job| {
                let printed = std::fs::read_to_string(&job.output).unwrap_or_default();
                let tail: Vec<&str> = printed.lines().rev().take(15).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!(
                    "--- line {}: {}\n{}",
                    job.line,
                    job.command,
                    tail.join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Stops every background command (SIGTERM to its process group, then
    /// SIGKILL after 30 s).
    fn stop_all(&mut self) -> Result<()> {
        for job in &self.background {
            signal(job.child.id(), "TERM");
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        for mut job in std::mem::take(&mut self.background) {
            loop {
                if job.child.try_wait()?.is_some() {
                    break;
                }
                if Instant::now() > deadline {
                    signal(job.child.id(), "KILL");
                    let _ = job.child.wait();
                    bail!(
                        "README line {}: `{}` did not stop on SIGTERM",
                        job.line,
                        job.command
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// Runs `command` until its output matches `expected`.
    fn run(&mut self, line: usize, command: &str, expected: &[String]) -> Result<()> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let out = output_within(self.shell(command)?, COMMAND_TIMEOUT)?;
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            let seen = if out.status.success() {
                matches(expected, &stdout, &self.background_output())
            } else {
                Err(format!(
                    "{}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            };
            match seen {
                Ok(()) => return Ok(()),
                Err(why) if Instant::now() > deadline => bail!(
                    "README line {line}: `{command}` did not do what the README shows \
                     within {PATIENCE:?}: {why}\nprinted:\n{stdout}\nexpected:\n{}\n\
                     background commands:\n{}",
                    expected.join("\n"),
                    self.describe_background()
                ),
                Err(_) => std::thread::sleep(Duration::from_millis(250)),
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for job in &mut self.background {
            signal(job.child.id(), "KILL");
            let _ = job.child.wait();
        }
    }
}

fn signal(process_group: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([
            format!("-{signal}"),
            "--".to_string(),
            format!("-{process_group}"),
        ])
        .status();
}

/// `text` with every run of six or more hex digits replaced by `<id>`, the
/// port of every `127.0.0.1:PORT` by `<port>`, and whitespace trimmed.
fn normalize(text: &str) -> String {
    let mut text = text.trim();
    let mut ported = String::new();
    while let Some(at) = text.find("127.0.0.1:") {
        let (before, after) = text.split_at(at + "127.0.0.1:".len());
        ported.push_str(before);
        let digits = after.chars().take_while(char::is_ascii_digit).count();
        if digits > 0 {
            ported.push_str("<port>");
        }
        text = &after[digits..];
    }
    ported.push_str(text);
    let mut out = String::new();
    let mut run = String::new();
    for c in ported.chars().chain(std::iter::once('\n')) {
        if c.is_ascii_hexdigit() {
            run.push(c);
            continue;
        }
        if run.len() >= 6 {
            out.push_str("<id>");
        } else {
            out.push_str(&run);
        }
        run.clear();
        out.push(c);
    }
    out.pop();
    out
}

/// Whether `actual` has the shape of `expected` (see the module doc).
fn same_json(key: Option<&str>, expected: &Value, actual: &Value) -> Result<(), String> {
    let differ = || {
        Err(format!(
            "{} is {actual}, the README shows {expected}",
            key.unwrap_or("value")
        ))
    };
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            let mut ek: Vec<&String> = e.keys().collect();
            let mut ak: Vec<&String> = a.keys().collect();
            ek.sort();
            ak.sort();
            if ek != ak {
                return Err(format!("keys {ak:?}, the README shows {ek:?}"));
            }
            e.iter().try_for_each(|(k, v)| same_json(Some(k), v, &a[k]))
        }
        (Value::Array(e), Value::Array(a)) if e.len() == a.len() => {
            e.iter().zip(a).try_for_each(|(e, a)| same_json(key, e, a))
        }
        (Value::String(e), Value::String(a)) if normalize(e) == normalize(a) => Ok(()),
        (Value::Number(_), Value::Number(_)) | (Value::String(_), Value::String(_))
            if key.is_some_and(|k| VARYING.contains(&k)) =>
        {
            Ok(())
        }
        (e, a) if e == a => Ok(()),
        _ => differ(),
    }
}

/// Whether a command's `stdout` (and what background commands printed)
/// shows what the README's `expected` lines show.
fn matches(expected: &[String], stdout: &str, background: &str) -> Result<(), String> {
    if expected.is_empty() {
        return Ok(());
    }
    let joined = expected.join("\n");
    if let Ok(want) = serde_json::from_str::<Value>(&joined) {
        let got: Value =
            serde_json::from_str(stdout.trim()).map_err(|e| format!("not JSON ({e})"))?;
        return same_json(None, &want, &got);
    }
    if expected[0].starts_with("+-") {
        return same_table(expected, stdout);
    }
    let actual: Vec<String> = stdout.lines().map(normalize).collect();
    let mut from = 0;
    for want in expected {
        if want.trim() == "..." {
            return Ok(());
        }
        if let Ok(json) = serde_json::from_str::<Value>(want) {
            let found = stdout.lines().chain(background.lines()).any(|line| {
                serde_json::from_str::<Value>(line)
                    .is_ok_and(|got| same_json(None, &json, &got).is_ok())
            });
            if !found {
                return Err(format!("no line like {want}"));
            }
            continue;
        }
        let want = normalize(want);
        match actual[from..].iter().position(|line| *line == want) {
            Some(at) => from += at + 1,
            None => return Err(format!("no line `{want}` (in order)")),
        }
    }
    Ok(())
}

/// Same header row and the same first column, in order.
fn same_table(expected: &[String], stdout: &str) -> Result<(), String> {
    let cells = |line: &str| -> Vec<String> {
        line.trim()
            .trim_matches('|')
            .split('|')
            .map(|cell| cell.trim().to_string())
            .collect()
    };
    let rows = |lines: Vec<&str>| -> Vec<Vec<String>> {
        lines
            .into_iter()
            .filter(|line| line.trim_start().starts_with('|'))
            .map(cells)
            .collect()
    };
    let want = rows(expected.iter().map(String::as_str).collect());
    let got = rows(stdout.lines().collect());
    let header = |rows: &[Vec<String>]| rows.first().cloned().unwrap_or_default();
    if header(&want) != header(&got) {
        return Err(format!(
            "header {:?}, the README shows {:?}",
            header(&got),
            header(&want)
        ));
    }
    let first = |rows: &[Vec<String>]| -> Vec<String> {
        rows.iter().skip(1).map(|row| normalize(&row[0])).collect()
    };
    if first(&want) != first(&got) {
        return Err(format!(
            "rows {:?}, the README shows {:?}",
            first(&got),
            first(&want)
        ));
    }
    Ok(())
}

/// The run command: `./scripts/setup && cargo run --release -p P -- ARGS`.
fn start_run_command(session: &mut Session, block: &[String]) -> Result<()> {
    let [command] = block else {
        bail!("the README's first block holds one command, not {block:?}");
    };
    let rest = command
        .strip_prefix("./scripts/setup && ")
        .with_context(|| format!("the run command `{command}` starts with ./scripts/setup"))?;
    ensure!(
        repo().join("scripts/setup").exists(),
        "scripts/setup is missing"
    );
    ensure!(
        rest.starts_with("cargo run --release -p mpreg-daemon --"),
        "the run command runs the daemon: `{rest}`"
    );
    let rewritten = session.rewrite(rest)?;
    session.start(1, &rewritten)
}

#[test]
fn the_readme_runs_as_written() -> Result<()> {
    let readme = std::fs::read_to_string(repo().join("README.md"))?;
    let steps = steps(&readme)?;
    let mut session = Session::new()?;
    let mut plain = 0;
    for step in &steps {
        match step {
            Step::Plain(block) => {
                plain += 1;
                match plain {
                    1 => start_run_command(&mut session, block)?,
                    2 => ensure!(
                        block == &["./scripts/test"] && repo().join("scripts/test").exists(),
                        "the README's second command is ./scripts/test: {block:?}"
                    ),
                    _ => {}
                }
            }
            Step::Stop => session.stop_all()?,
            Step::Run {
                line,
                command,
                expected,
            } => {
                let rewritten = session.rewrite(command)?;
                match background(&rewritten) {
                    Some(foreground) => session.start(*line, &foreground)?,
                    None => session.run(*line, &rewritten, expected)?,
                }
            }
        }
    }
    ensure!(
        plain >= 2,
        "the README starts with the run command and the test command"
    );
    let runs = steps
        .iter()
        .filter(|s| matches!(s, Step::Run { .. }))
        .count();
    ensure!(runs >= 20, "only {runs} README commands ran");
    session.stop_all()
}

/// The command without its trailing `&` (and comment), when it has one.
fn background(command: &str) -> Option<String> {
    let mut quote = None;
    let mut body = command;
    for (at, c) in command.char_indices() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(open), _) if c == open => quote = None,
            (None, '#') if command[..at].ends_with(char::is_whitespace) => {
                body = &command[..at];
                break;
            }
            _ => {}
        }
    }
    body.trim_end()
        .strip_suffix('&')
        .map(|c| c.trim_end().to_string())
}

#[test]
fn readme_matching_is_strict_where_it_should_be() {
    let lines = |text: &str| text.lines().map(str::to_string).collect::<Vec<_>>();
    assert!(matches(&lines("5"), "5\n", "").is_ok());
    assert!(matches(&lines("5"), "6\n", "").is_err());
    assert!(
        matches(
            &lines(r#"{"leader":1,"status":"ok"}"#),
            r#"{"leader":7,"status":"ok"}"#,
            ""
        )
        .is_ok()
    );
    assert!(matches(&lines(r#"{"status":"ok"}"#), r#"{"status":"down"}"#, "").is_err());
    assert!(matches(&lines(r#"{"a":1}"#), r#"{"a":1,"b":2}"#, "").is_err());
    assert!(matches(&lines(r#"{"u":"a-1"}"#), r#"{"u":"b-2"}"#, "").is_ok());
    assert!(matches(&lines(r#"{"u":"a-1"}"#), r#"{"u":7}"#, "").is_err());
    assert!(
        matches(
            &lines(r#"{"url":"ws://127.0.0.1:42273"}"#),
            r#"{"url":"ws://127.0.0.1:7"}"#,
            ""
        )
        .is_ok()
    );
    assert!(
        matches(
            &lines(r#"{"url":"ws://127.0.0.1:42273"}"#),
            r#"{"url":"ws://127.0.0.2:42273"}"#,
            ""
        )
        .is_err()
    );
    assert!(
        matches(
            &lines(r#"{"id":"node-bdd5e74583ee"}"#),
            r#"{"id":"node-0123456789ab"}"#,
            ""
        )
        .is_ok()
    );
    assert!(
        matches(
            &lines("published\n{\"topic\":\"t\"}"),
            "published\n",
            "{\"topic\":\"t\"}\n"
        )
        .is_ok()
    );
    assert!(matches(&lines("published\n{\"topic\":\"t\"}"), "published\n", "").is_err());
    let table = "+---+\n| a |\n+---+\n| x |\n+---+";
    assert!(matches(&lines(table), "+---+\n| a |\n+---+\n| x |\n+---+\n", "").is_ok());
    assert!(matches(&lines(table), "+---+\n| a |\n+---+\n| y |\n+---+\n", "").is_err());
    assert!(
        matches(
            &lines("{\n  \"n\": 1,\n..."),
            "{\n  \"n\": 1,\n  \"m\": 2\n}",
            ""
        )
        .is_ok()
    );
    assert_eq!(
        background("mpreg subscribe 'orders.#' &      # a comment"),
        Some("mpreg subscribe 'orders.#'".into())
    );
    assert_eq!(background("mpreg subscribe 'orders.#'"), None);
    assert_eq!(
        background("mpreg subscribe 'a.#' &  # wildcards: # = zero or more"),
        Some("mpreg subscribe 'a.#'".into())
    );
    assert_eq!(background("echo '# &'"), None);
}
