//! N real `mpreg-daemon` processes forming one cluster, and the faults the
//! cluster tests inject: kill -9 and restart, SIGSTOP / SIGCONT, network
//! partitions and slow links through a [`Proxy`] in front of each node,
//! and a power cut of all nodes at once.
//!
//! Member `i` is node `n<i+1>`. Every member advertises its proxy's URL,
//! so all raft traffic between nodes crosses the proxies; tests talk to
//! the nodes directly. The first member forms the cluster, the others
//! `--join` it.
//!
//! Ports: every daemon binds port 0. The proxy binds port 0 too and its
//! URL is what the membership records (`--advertise-url`), so a member
//! keeps its address across restarts whatever port its process gets. The
//! proxy must reach the node before the node is ready (a joining or
//! restarted member hears from the leader before it writes its ready
//! file), so the harness points the proxy at the node as soon as the
//! daemon's `--listening-file` names its port.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use crate::power_cut::{Cut, drop_unsynced};
use crate::proxy::{LinkFaults, Proxy};
use crate::{Daemon, TestDir, sql_rows, status_of};

/// One member and its fault-injection handles.
pub struct Member {
    pub name: String,
    /// Dropped before `dir`: its log tail is printed from there.
    daemon: Option<Daemon>,
    pub dir: TestDir,
    pub proxy: Proxy,
    /// Client and admin URL of the last run (kept while stopped).
    pub client_url: String,
    pub admin_url: String,
    /// Where strace records the member's file writes and syncs, for
    /// [`Cluster::power_cut`] (members of [`Cluster::start_traced`] until
    /// the cut).
    trace: Option<PathBuf>,
    /// The libfaketime offset file of the member's wall clock (members of
    /// [`Cluster::start_with_clocks`]).
    clock: Option<PathBuf>,
}

impl Member {
    fn started(&mut self, daemon: Daemon) {
        self.client_url = daemon.ready.client_url.clone();
        self.admin_url = daemon.ready.admin_url.clone();
        self.daemon = Some(daemon);
    }
}

/// The flags and the wrapper a member starts with.
struct MemberCommand {
    args: Vec<String>,
    wrapper: Vec<String>,
}

impl MemberCommand {
    /// Starts `member`'s daemon (blocking until it is ready), pointing its
    /// proxy at it as soon as it listens.
    fn spawn(&self, member: &Member) -> Result<Daemon> {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let wrapper: Vec<&str> = self.wrapper.iter().map(String::as_str).collect();
        Daemon::spawn(&wrapper, &member.dir, &args, |addr| {
            member.proxy.set_target(addr);
            Ok(())
        })
        .with_context(|| format!("start {}", member.name))
    }
}

/// Runs `mpreg cluster <args>`: its stdout, or its stderr when it fails.
pub fn cluster_cli(args: &[&str]) -> std::result::Result<String, String> {
    let out = Command::new(crate::cli_bin())
        .arg("cluster")
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        Err(text(&out.stderr))
    }
}

/// A cluster of real daemons on loopback.
pub struct Cluster {
    pub members: Vec<Member>,
    /// TOML written as each member's config file.
    config: String,
    /// Whether new members run under a trace for [`Cluster::power_cut`].
    traced: bool,
    /// Whether new members run with a wall clock [`Cluster::jump_clock`]
    /// moves.
    clocks: bool,
}

/// Threads of `pid` not in the stopped state (`T`), as (tid, state).
fn running_threads(pid: u32) -> Result<Vec<(String, String)>> {
    let mut running = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let task = task?;
        // A thread that exited meanwhile is not running.
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let state = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .context("unreadable /proc stat")?;
        if state != "T" {
            running.push((
                task.file_name().to_string_lossy().into_owned(),
                state.to_string(),
            ));
        }
    }
    Ok(running)
}

fn signal(pid: u32, name: &str) -> Result<()> {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()?;
    if !status.success() {
        bail!("kill -{name} {pid} failed");
    }
    Ok(())
}

impl Cluster {
    /// Starts `n` members with `config` (TOML) as their config file, and
    /// waits until all agree on a leader. `{node}` in `config` stands for
    /// each member's node id (`n1`, `n2`, ...), e.g. in its certificate's
    /// file name.
    pub async fn start(n: usize, config: &str) -> Result<Cluster> {
        Cluster::start_members(n, config, false, false).await
    }

    /// Like [`Cluster::start`], each member under a trace of its file
    /// writes and syncs ([`crate::power_cut`]), for [`Cluster::power_cut`].
    pub async fn start_traced(n: usize, config: &str) -> Result<Cluster> {
        Cluster::start_members(n, config, true, false).await
    }

    /// Like [`Cluster::start`], each member (and each added later) with a
    /// wall clock of its own ([`crate::faketime`]) for
    /// [`Cluster::jump_clock`].
    pub async fn start_with_clocks(n: usize, config: &str) -> Result<Cluster> {
        Cluster::start_members(n, config, false, true).await
    }

    async fn start_members(n: usize, config: &str, traced: bool, clocks: bool) -> Result<Cluster> {
        let mut cluster = Cluster {
            members: Vec::new(),
            config: config.to_string(),
            traced,
            clocks,
        };
        for _ in 0..n {
            cluster.add().await?;
        }
        let all: Vec<usize> = (0..n).collect();
        cluster.wait_leader(&all, Duration::from_secs(30)).await?;
        Ok(cluster)
    }

    /// Starts one more member, joining through the first live member.
    pub async fn add(&mut self) -> Result<usize> {
        let join = self
            .members
            .iter()
            .find(|m| m.daemon.is_some())
            .map(|m| self.url_of(m));
        let index = self.prepare().await?;
        self.launch(index, join).await?;
        Ok(index)
    }

    /// A member that is not started yet: its name, dir and proxy (so its
    /// URL is known before it runs). Start it with [`Cluster::start_joining`].
    pub async fn prepare(&mut self) -> Result<usize> {
        let index = self.members.len();
        let dir = TestDir::new();
        let member = Member {
            name: format!("n{}", index + 1),
            trace: self.traced.then(|| dir.path().join("strace.log")),
            clock: self.clocks.then(|| dir.path().join("faketime-offset")),
            dir,
            proxy: Proxy::start().await?,
            daemon: None,
            client_url: String::new(),
            admin_url: String::new(),
        };
        self.members.push(member);
        Ok(index)
    }

    /// Starts prepared member `i` with `--join join`; returns once it is
    /// ready (a voter that knows a leader).
    pub async fn start_joining(&mut self, i: usize, join: String) -> Result<()> {
        self.launch(i, Some(join)).await
    }

    async fn launch(&mut self, i: usize, join: Option<String>) -> Result<()> {
        let command = self.command(i, join)?;
        let member = &self.members[i];
        let daemon = tokio::task::block_in_place(|| command.spawn(member))?;
        self.members[i].started(daemon);
        Ok(())
    }

    /// Starts the stopped members `group` one `gap` after another, as
    /// machines come back after an outage of the whole cluster, and waits
    /// until all are ready (a member back early waits for a quorum before
    /// it is ready).
    pub async fn restart_staggered(&mut self, group: &[usize], gap: Duration) -> Result<()> {
        let commands = group
            .iter()
            .map(|&i| self.command(i, None))
            .collect::<Result<Vec<_>>>()?;
        let members = &self.members;
        let daemons = tokio::task::block_in_place(|| {
            std::thread::scope(|scope| {
                let starts: Vec<_> = group
                    .iter()
                    .zip(&commands)
                    .zip(0u32..)
                    .map(|((&i, command), nth)| {
                        scope.spawn(move || {
                            std::thread::sleep(gap * nth);
                            command.spawn(&members[i])
                        })
                    })
                    .collect();
                starts
                    .into_iter()
                    .map(|start| start.join().expect("a start thread"))
                    .collect::<Result<Vec<_>>>()
            })
        })?;
        for (&i, daemon) in group.iter().zip(daemons) {
            self.members[i].started(daemon);
        }
        Ok(())
    }

    /// How member `i` is started: its flags and the wrapper that runs it.
    fn command(&self, i: usize, join: Option<String>) -> Result<MemberCommand> {
        let member = &self.members[i];
        let config = self.config.replace("{node}", &member.name);
        let mut args = member.dir.config(&config);
        args.extend([
            "--node-id".to_string(),
            member.name.clone(),
            "--advertise-url".to_string(),
            self.url_of(member),
        ]);
        if let Some(join) = join {
            args.extend(["--join".to_string(), join]);
        }
        let mut wrapper = match &member.clock {
            Some(offset_file) if offset_file.exists() => {
                crate::faketime::wrapper_keeping(offset_file)?
            }
            Some(offset_file) => crate::faketime::wrapper(offset_file)?,
            None => Vec::new(),
        };
        match &member.trace {
            Some(trace) if trace.exists() => {
                bail!("{} restarted before its power cut", member.name)
            }
            Some(trace) => wrapper.extend(crate::power_cut::strace_wrapper(trace)),
            None => {}
        }
        Ok(MemberCommand { args, wrapper })
    }

    /// The URL member `m` is reached at (through its proxy): `wss://` when
    /// the config serves TLS.
    pub fn url_of(&self, m: &Member) -> String {
        let url = m.proxy.url();
        if self.config.contains("tls_cert_file") {
            url.replacen("ws://", "wss://", 1)
        } else {
            url
        }
    }

    pub fn daemon(&self, i: usize) -> &Daemon {
        self.members[i].daemon.as_ref().expect("member is running")
    }

    /// Indexes of members whose process runs (paused ones included).
    pub fn running(&self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|&i| self.members[i].daemon.is_some())
            .collect()
    }

    /// Sets member `i`'s wall clock to real time plus `offset` (`+1h`,
    /// `-1h`, `+0`) while it runs, and for its restarts.
    pub fn jump_clock(&self, i: usize, offset: &str) -> Result<()> {
        let member = &self.members[i];
        let offset_file = member
            .clock
            .as_ref()
            .with_context(|| format!("{} has no fake clock (start_with_clocks)", member.name))?;
        crate::faketime::jump(offset_file, offset)
    }

    /// `kill -9` member `i`.
    pub fn kill9(&mut self, i: usize) -> Result<()> {
        let daemon = self.members[i].daemon.take().context("already stopped")?;
        daemon.kill9()
    }

    /// A power cut of every member at once: `kill -9` of all, then each
    /// member's files cut back to what its last syncs covered
    /// ([`crate::power_cut::drop_unsynced`]). Members of
    /// [`Cluster::start_traced`] only; restarts after it run untraced.
    pub fn power_cut(&mut self) -> Result<Vec<Cut>> {
        for i in self.running() {
            self.kill9(i)?;
        }
        self.members
            .iter_mut()
            .map(|member| {
                let trace = member.trace.take().context("a member without a trace")?;
                drop_unsynced(&trace, &member.dir.data())
                    .with_context(|| format!("power cut of {}", member.name))
            })
            .collect()
    }

    /// Removes member `i` from the membership through member `via`
    /// (`mpreg cluster remove`), then stops it.
    pub fn remove(&mut self, i: usize, via: usize) -> Result<()> {
        let name = self.members[i].name.clone();
        cluster_cli(&["remove", &name, "--admin", &self.members[via].admin_url])
            .map_err(|e| anyhow::anyhow!("remove {name}: {e}"))?;
        self.stop(i)
    }

    /// Once `among` agree on an index and digest, stops them all at once
    /// (SIGTERM to each, then waits) and replays each data dir offline:
    /// a replay that stopped at that index must give that digest, and at
    /// least one does (stopping can let the rest commit a new leader's
    /// first entry). Returns the index.
    pub async fn replays_agree(&mut self, among: &[usize], timeout: Duration) -> Result<u64> {
        let (applied, digest) = self.wait_converged(among, timeout).await?;
        for &i in among {
            signal(self.daemon(i).pid(), "TERM")?;
        }
        let mut compared = 0;
        for &i in among {
            let status = self.wait_exit(i)?;
            ensure!(
                status.success(),
                "{} stopped with {status}",
                self.members[i].name
            );
            let replayed = crate::replay(&self.members[i].dir.data())?;
            let name = &self.members[i].name;
            let index = replayed["last_applied"].as_u64().unwrap_or(0);
            ensure!(
                index >= applied,
                "{name} replayed to {index}, it had applied {applied}"
            );
            if index == applied {
                ensure!(
                    replayed["views_digest"] == digest.as_str(),
                    "{name}: replay {replayed} vs live {digest} at {applied}"
                );
                compared += 1;
            }
        }
        ensure!(
            compared > 0,
            "no replay stopped where {among:?} converged ({applied})"
        );
        Ok(applied)
    }

    /// SIGTERM member `i` and wait for it to exit.
    pub fn stop(&mut self, i: usize) -> Result<()> {
        let daemon = self.members[i].daemon.take().context("already stopped")?;
        daemon.stop().map(drop)
    }

    /// Waits until member `i` exits by itself; returns its exit status.
    pub fn wait_exit(&mut self, i: usize) -> Result<std::process::ExitStatus> {
        let daemon = self.members[i].daemon.take().context("already stopped")?;
        daemon.wait_exit()
    }

    /// Starts a stopped member again on its dir (on a new port, behind
    /// the same proxy).
    pub async fn restart(&mut self, i: usize) -> Result<()> {
        self.launch(i, None).await
    }

    /// SIGSTOP: the process holds its sockets but answers nothing. Returns
    /// once every thread is stopped: `kill` returns when the signal is
    /// queued, and a thread running on another CPU runs on until it is
    /// interrupted (measured: a paused member answered a request 0.3 ms
    /// after `kill -STOP` returned, under load).
    pub fn pause(&self, i: usize) -> Result<()> {
        let pid = self.daemon(i).pid();
        signal(pid, "STOP")?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let running = running_threads(pid)?;
            if running.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "member {i} (pid {pid}) still has running threads {running:?} 5 s after SIGSTOP"
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Sends SIGHUP to member `i` (it reads its config file again).
    pub fn sighup(&self, i: usize) -> Result<()> {
        signal(self.daemon(i).pid(), "HUP")
    }

    pub fn resume(&self, i: usize) -> Result<()> {
        signal(self.daemon(i).pid(), "CONT")
    }

    /// Cuts every link between `group` and the other members, both ways.
    pub fn isolate(&self, group: &[usize]) {
        let rest: Vec<usize> = (0..self.members.len())
            .filter(|i| !group.contains(i))
            .collect();
        self.cut_between(group, &rest);
    }

    /// Cuts every link between a member of `one` and a member of `other`,
    /// both ways; links within each side, and to members of neither (a
    /// bridge), stay.
    pub fn cut_between(&self, one: &[usize], other: &[usize]) {
        for &i in one {
            for &j in other {
                self.members[i].proxy.block(&self.members[j].name);
                self.members[j].proxy.block(&self.members[i].name);
            }
        }
    }

    /// Restores every link, blocked or slowed.
    pub fn heal(&self) {
        for member in &self.members {
            member.proxy.unblock_all();
            member.proxy.set_faults(LinkFaults::default());
        }
    }

    /// Slows every link between members as `faults` say, until [`Cluster::heal`].
    pub fn slow_links(&self, faults: LinkFaults) {
        for member in &self.members {
            member.proxy.set_faults(faults);
        }
    }

    /// `/status` of member `i`.
    pub async fn status(&self, i: usize) -> Result<Value> {
        status_of(&self.members[i].admin_url).await
    }

    /// Rows of `sql` on member `i`.
    pub async fn sql(&self, i: usize, sql: &str) -> Result<Vec<Value>> {
        sql_rows(&self.members[i].admin_url, sql).await
    }

    /// Waits until every member of `among` names the same leader, which is
    /// one of them and says it leads; returns its index.
    pub async fn wait_leader(&self, among: &[usize], timeout: Duration) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        let mut last = Vec::new();
        loop {
            last.clear();
            for &i in among {
                last.push(self.status(i).await.ok());
            }
            let leaders: Vec<Option<u64>> = last
                .iter()
                .map(|s| s.as_ref().and_then(|s| s["leader"].as_u64()))
                .collect();
            if let Some(Some(leader)) = leaders.first()
                && leaders.iter().all(|l| *l == Some(*leader))
                && let Some(pos) = last.iter().position(|s| {
                    s.as_ref().is_some_and(|s| {
                        s["role"] == "leader" && s["leader"].as_u64() == Some(*leader)
                    })
                })
            {
                return Ok(among[pos]);
            }
            if Instant::now() > deadline {
                bail!("no agreed leader among {among:?} after {timeout:?}: {last:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every member of `among` has applied the same index with
    /// the same digest; returns them.
    pub async fn wait_converged(
        &self,
        among: &[usize],
        timeout: Duration,
    ) -> Result<(u64, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut seen = Vec::new();
            for &i in among {
                if let Ok(status) = self.status(i).await {
                    seen.push((
                        status["last_applied"].as_u64().unwrap_or(0),
                        status["views_digest"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                    ));
                }
            }
            if seen.len() == among.len() && seen.windows(2).all(|w| w[0] == w[1]) {
                return Ok(seen.swap_remove(0));
            }
            if Instant::now() > deadline {
                bail!("members {among:?} did not converge within {timeout:?}: {seen:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
