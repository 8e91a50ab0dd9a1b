//! The cluster under test: every site a `tricommit node` child process behind the link
//! proxy, and the faults that act on processes (`kill -9` and restart, `SIGSTOP` and
//! `SIGCONT`).
//!
//! While the runner holds it, `cluster.toml` names the proxy's addresses in `sites` (what
//! peers and clients dial) and the nodes' own ones in `[listen]` (where they bind); the
//! file as it was is written back when the runner lets go, on every path (Drop). Each
//! node's stderr goes to `DIR/chaos-logs/<site>.log`; its stdout carries the readiness
//! line (`ready <site>`), which a thread per node watches.

use std::io::BufRead;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tricommit_engine::client::config::{write_atomically, ClusterConfig, CLUSTER_FILE};

use super::proxy::Proxy;
use super::ChaosError;

/// How long nodes have to become ready (all links up).
pub const READY_WAIT_MS_MAX: u64 = 60_000;
/// How long a stopping node may take (its drain bound is a few seconds) before it is
/// killed.
const STOP_GRACE_MS: u64 = 30_000;
const POLL_MS: u64 = 10;
/// The log directory below the cluster directory.
pub const LOG_DIR: &str = "chaos-logs";

/// One site's process.
struct SiteProcess {
    name: String,
    child: Option<Child>,
    ready: Arc<AtomicBool>,
    paused: bool,
}

/// The cluster's processes and the rewritten configuration; both undone on drop.
pub struct ChaosCluster {
    dir: PathBuf,
    exe: PathBuf,
    /// `cluster.toml` as it was before the runner rewrote it.
    original: Vec<u8>,
    sites: Vec<SiteProcess>,
}

impl ChaosCluster {
    /// Points the cluster's `sites` at `proxy` and its `[listen]` at the nodes' own
    /// addresses. Starts nothing.
    pub fn prepare(
        dir: &Path,
        config: &ClusterConfig,
        proxy: &Proxy,
    ) -> Result<ChaosCluster, ChaosError> {
        let path = dir.join(CLUSTER_FILE);
        let original = std::fs::read(&path).map_err(|source| ChaosError::Io {
            what: format!("reading {}", path.display()),
            source,
        })?;
        let mut rewritten = config.clone();
        for (entry, public) in config.site_entries().iter().zip(proxy.public_addrs()) {
            let bind = config.listen_addr(entry);
            rewritten
                .listen
                .insert(entry.name.clone(), bind.to_string());
            rewritten
                .sites
                .insert(entry.name.clone(), public.to_string());
        }
        let exe = std::env::current_exe().map_err(|source| ChaosError::Io {
            what: "finding this executable".into(),
            source,
        })?;
        let cluster = ChaosCluster {
            dir: dir.to_owned(),
            exe,
            original,
            sites: config
                .site_entries()
                .into_iter()
                .map(|entry| SiteProcess {
                    name: entry.name,
                    child: None,
                    ready: Arc::new(AtomicBool::new(false)),
                    paused: false,
                })
                .collect(),
        };
        write_atomically(dir, CLUSTER_FILE, rewritten.render().as_bytes(), 0o644)
            .map_err(|error| ChaosError::Setup(error.to_string()))?;
        std::fs::create_dir_all(dir.join(LOG_DIR)).map_err(|source| ChaosError::Io {
            what: format!("creating {}", dir.join(LOG_DIR).display()),
            source,
        })?;
        Ok(cluster)
    }

    fn index(&self, name: &str) -> usize {
        self.sites
            .iter()
            .position(|site| site.name == name)
            .unwrap_or_else(|| panic!("the runner names only sites of the cluster: {name}"))
    }

    /// The cluster directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The site names, replicas first.
    pub fn names(&self) -> Vec<String> {
        self.sites.iter().map(|site| site.name.clone()).collect()
    }

    /// Starts site `name` with `extra` node flags (e.g. `--test-crash-at`).
    pub fn start(&mut self, name: &str, extra: &[String]) -> Result<(), ChaosError> {
        let index = self.index(name);
        let log_path = self.dir.join(LOG_DIR).join(format!("{name}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|source| ChaosError::Io {
                what: format!("opening {}", log_path.display()),
                source,
            })?;
        let mut command = Command::new(&self.exe);
        command
            .args(["node", "--cluster"])
            .arg(&self.dir)
            .args(["--site", name])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        // SAFETY: the closure runs in the child between fork and exec, where only
        // async-signal-safe calls are allowed; prctl(2) is one, and it allocates nothing.
        unsafe {
            command.pre_exec(|| {
                // A runner killed without a chance to stop its nodes takes them along.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = command.spawn().map_err(|source| ChaosError::Io {
            what: format!("starting {name}"),
            source,
        })?;
        let ready = Arc::new(AtomicBool::new(false));
        let stdout = child.stdout.take().expect("stdout is piped");
        let flag = ready.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("ready") {
                    flag.store(true, Ordering::Release);
                }
            }
        });
        let site = &mut self.sites[index];
        site.child = Some(child);
        site.ready = ready;
        site.paused = false;
        Ok(())
    }

    /// Waits until every running site said `ready`, within `READY_WAIT_MS_MAX`.
    pub fn wait_ready(&mut self) -> Result<Duration, ChaosError> {
        let started = Instant::now();
        loop {
            for site in &mut self.sites {
                if let Some(child) = &mut site.child {
                    if let Ok(Some(status)) = child.try_wait() {
                        return Err(ChaosError::Setup(format!(
                            "{} exited ({status}) before it was ready; see {}/{}.log",
                            site.name,
                            self.dir.join(LOG_DIR).display(),
                            site.name
                        )));
                    }
                }
            }
            let waiting: Vec<&str> = self
                .sites
                .iter()
                .filter(|site| site.child.is_some() && !site.ready.load(Ordering::Acquire))
                .map(|site| site.name.as_str())
                .collect();
            if waiting.is_empty() {
                return Ok(started.elapsed());
            }
            if started.elapsed() > Duration::from_millis(READY_WAIT_MS_MAX) {
                return Err(ChaosError::Setup(format!(
                    "not ready after {} s: {}",
                    READY_WAIT_MS_MAX / 1000,
                    waiting.join(", ")
                )));
            }
            std::thread::sleep(Duration::from_millis(POLL_MS));
        }
    }

    /// `kill -9` of site `name`: it loses everything not yet synced. Returns when the
    /// process is gone.
    pub fn kill9(&mut self, name: &str) -> Instant {
        let index = self.index(name);
        let at = Instant::now();
        if let Some(mut child) = self.sites[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        at
    }

    /// Reaps site `name` if its process exited by itself (a crash point); says whether
    /// it did.
    pub fn reap_if_exited(&mut self, name: &str) -> bool {
        let index = self.index(name);
        let exited = self.sites[index]
            .child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(Some(_))));
        if exited {
            self.sites[index].child = None;
        }
        exited
    }

    /// `SIGSTOP` (`pause = true`) or `SIGCONT` to site `name`.
    pub fn pause(&mut self, name: &str, pause: bool) {
        let index = self.index(name);
        let site = &mut self.sites[index];
        if let Some(child) = &site.child {
            crate::cluster::signal(child, if pause { libc::SIGSTOP } else { libc::SIGCONT });
            site.paused = pause;
        }
    }

    /// Resumes every paused site and starts every site that is down.
    pub fn heal(&mut self) -> Result<(), ChaosError> {
        for name in self.names() {
            let index = self.index(&name);
            if self.sites[index].paused {
                self.pause(&name, false);
            }
            if self.reap_if_exited(&name) || self.sites[index].child.is_none() {
                self.start(&name, &[])?;
            }
        }
        Ok(())
    }

    /// Stops the participants, then the replicas (SIGTERM, then SIGKILL after
    /// `STOP_GRACE_MS`), as `cluster up` does; says which did not exit 0.
    pub fn stop_all(&mut self) -> Vec<String> {
        let mut unclean = Vec::new();
        for participants in [true, false] {
            let wave: Vec<String> = self
                .names()
                .into_iter()
                .filter(|name| name.starts_with("participant-") == participants)
                .collect();
            unclean.extend(self.stop_sites(&wave));
        }
        unclean
    }

    /// Stops `names` as `stop_all` does; says which did not exit 0.
    pub fn stop_sites(&mut self, names: &[String]) -> Vec<String> {
        for name in names {
            let index = self.index(name);
            if self.sites[index].paused {
                self.pause(name, false);
            }
            if let Some(child) = &self.sites[index].child {
                crate::cluster::signal(child, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_millis(STOP_GRACE_MS);
        let mut unclean = Vec::new();
        for name in names {
            let index = self.index(name);
            let Some(mut child) = self.sites[index].child.take() else {
                continue;
            };
            let status = loop {
                match child.try_wait() {
                    Ok(Some(status)) => break Some(status),
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(POLL_MS))
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break None;
                    }
                }
            };
            if !status.is_some_and(|status| status.success()) {
                unclean.push(name.clone());
            }
        }
        unclean
    }
}

impl Drop for ChaosCluster {
    fn drop(&mut self) {
        for site in &mut self.sites {
            if let Some(mut child) = site.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if let Err(error) = write_atomically(&self.dir, CLUSTER_FILE, &self.original, 0o644) {
            eprintln!("tricommit: error: restoring {CLUSTER_FILE}: {error}");
        }
    }
}
