//! A network namespace of the test's own, whose loopback can lose packets.
//!
//! The machine's kernel has no `netem`, so loss comes from nftables: a rule
//! on the namespace's input hook drops a random share of TCP packets, as a
//! lossy wire would, and TCP retransmits them (stalls of 200 ms and more).
//! A test runs its whole body inside the namespace with [`run_inside`]:
//! its runtime's threads, the daemons they start and the clients they
//! connect all see the namespace's own `127.0.0.1`, so the rest of the
//! machine (and the other tests) is never touched. Needs root, `ip`
//! (iproute2) and `nft` (nftables; `scripts/setup --test-tools` installs
//! it).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, ensure};

const TOOLS: &str =
    "root, ip (iproute2) and nft (nftables; scripts/setup --test-tools installs it)";

/// The nftables table that drops packets; removing it heals the links.
const TABLE: &str = "mpreg_loss";

/// A named network namespace with its loopback up; deleted on drop.
pub struct Namespace {
    name: String,
}

impl Namespace {
    /// Creates `mpreg-<pid>-<n>` with `lo` up.
    pub fn create() -> Result<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "mpreg-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let namespace = Self { name };
        namespace.exec(&["ip", "link", "set", "lo", "up"], None)?;
        Ok(namespace)
    }

    /// From now on every TCP packet arriving in the namespace is dropped
    /// with probability `per_mille` / 1000 (replacing any earlier loss).
    pub fn lose(&self, per_mille: u32) -> Result<()> {
        self.heal()?;
        let rules = format!(
            "table inet {TABLE} {{\n  chain input {{\n    type filter hook input priority 0;\n    \
             meta l4proto tcp numgen random mod 1000 < {per_mille} counter drop\n  }}\n}}\n"
        );
        self.exec(&["nft", "-f", "-"], Some(&rules))
    }

    /// Stops dropping packets; returns how many were dropped since
    /// [`Namespace::lose`].
    pub fn heal(&self) -> Result<u64> {
        let listed = Command::new("ip")
            .args([
                "netns", "exec", &self.name, "nft", "list", "table", "inet", TABLE,
            ])
            .output()
            .context(TOOLS)?;
        if !listed.status.success() {
            return Ok(0);
        }
        let listed = String::from_utf8_lossy(&listed.stdout);
        let dropped = listed
            .split_once("counter packets ")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("no drop counter in {listed}"))?;
        self.exec(&["nft", "delete", "table", "inet", TABLE], None)?;
        Ok(dropped)
    }

    /// Moves the calling thread into the namespace; threads and processes
    /// it starts afterwards are inside too.
    fn enter(&self) -> Result<()> {
        let path = format!("/var/run/netns/{}", self.name);
        let file = File::open(&path).with_context(|| format!("open {path}"))?;
        // SAFETY: setns takes a namespace file descriptor that stays open
        // for the call and changes only the calling thread's namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        ensure!(rc == 0, "setns {path}: {}", std::io::Error::last_os_error());
        Ok(())
    }

    fn exec(&self, command: &[&str], stdin: Option<&str>) -> Result<()> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(command);
        match stdin {
            None => run(&mut cmd),
            Some(text) => {
                use std::io::Write;
                let mut child = cmd
                    .stdin(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .context(TOOLS)?;
                child
                    .stdin
                    .take()
                    .context("stdin")?
                    .write_all(text.as_bytes())?;
                let out = child.wait_with_output()?;
                ensure!(
                    out.status.success(),
                    "{command:?} in {}: {}\n{}",
                    self.name,
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
                Ok(())
            }
        }
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().context(TOOLS)?;
    ensure!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Runs `body` on a multi-thread runtime (`workers` threads) inside a new
/// namespace, on a thread of its own so the caller's thread stays where it
/// was. A panic in `body` is the caller's panic.
pub fn run_inside<T: Send>(workers: usize, body: impl AsyncFnOnce(&Namespace) -> T + Send) -> T {
    let namespace = Namespace::create().expect(TOOLS);
    std::thread::scope(|scope| {
        let inside = scope.spawn(|| {
            namespace.enter().expect("enter the namespace");
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(body(&namespace))
        });
        match inside.join() {
            Ok(output) => output,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}
