//! N real `mpreg-daemon` processes forming one cluster, and the faults the
//! cluster tests inject: kill -9 and restart, SIGSTOP / SIGCONT, and
//! network partitions through a [`Proxy`] in front of each node.
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

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

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
}

/// A cluster of real daemons on loopback.
pub struct Cluster {
    pub members: Vec<Member>,
    /// TOML written as each member's config file.
    config: String,
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
        let mut cluster = Cluster {
            members: Vec::new(),
            config: config.to_string(),
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
        let member = Member {
            name: format!("n{}", index + 1),
            dir: TestDir::new(),
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
        let config = self.config.replace("{node}", &self.members[i].name);
        let advertised = self.url_of(&self.members[i]);
        let member = &mut self.members[i];
        let mut args = member.dir.config(&config);
        args.extend([
            "--node-id".to_string(),
            member.name.clone(),
            "--advertise-url".to_string(),
            advertised,
        ]);
        if let Some(join) = join {
            args.extend(["--join".to_string(), join]);
        }
        let (dir, proxy) = (&member.dir, &member.proxy);
        let daemon = tokio::task::block_in_place(|| {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            Daemon::start_with(dir, &refs, |addr| {
                proxy.set_target(addr);
                Ok(())
            })
        })
        .with_context(|| format!("start {}", member.name))?;
        member.client_url = daemon.ready.client_url.clone();
        member.admin_url = daemon.ready.admin_url.clone();
        member.daemon = Some(daemon);
        Ok(())
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

    /// `kill -9` member `i`.
    pub fn kill9(&mut self, i: usize) -> Result<()> {
        let daemon = self.members[i].daemon.take().context("already stopped")?;
        daemon.kill9()
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
        for (i, inside) in self.members.iter().enumerate() {
            for (j, outside) in self.members.iter().enumerate() {
                if group.contains(&i) != group.contains(&j) {
                    inside.proxy.block(&outside.name);
                }
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
