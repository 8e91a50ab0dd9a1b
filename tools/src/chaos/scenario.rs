//! The scenarios: what each injects, when, and what it measures. docs/chaos.md is the
//! reader's version of this file.
//!
//! Every scenario runs in one or more *phases*. A phase starts the cluster behind the
//! proxy, runs the load for `seconds`, and injects its fault at a quarter of it
//! (`warmup`); the runner then heals everything (cuts removed, paused sites resumed,
//! dead sites restarted), waits for a commit sent after the heal, and stops the
//! cluster. The bank check runs once, after the last phase.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Map, Value};

use tricommit_engine::client::config::ProtocolName;
use tricommit_engine::client::ClusterConfig;

use super::cluster::ChaosCluster;
use super::probe::Load;
use super::proxy::{Faults, Proxy, Site};
use super::ChaosError;

/// The kills of `replica-kill-preferred`.
pub const PREFERRED_KILLS: usize = 10;
/// How long one kill may take to lead to a commit before the scenario fails.
const KILL_RECOVERY_MS_MAX: u64 = 30_000;
/// The gray failure of `sigstop-preferred`.
const SIGSTOP_MS: u64 = 2_000;
/// One-way delays of `regions`.
pub const REGION_DELAY_MS: u64 = 30;
pub const LOCAL_DELAY_MS: u64 = 1;
/// The frames `frame-drop` drops, parts per million (1%).
const DROP_PPM: u32 = 10_000;
/// The shortest fault window.
const FAULT_MS_MIN: u64 = 2_000;
/// A crash point fires at this hit, so that the load is well under way.
const CRASH_HIT: u64 = 20;
/// How long a site killed by the scenario stays down before it is restarted.
const DOWN_MS: u64 = 1_000;
/// How long `two-pc-coordinator-kill` keeps its coordinator down: past the
/// participants' pending timeout, so that they have asked for the outcome (and got
/// none) before the check of what they hold.
const TWO_PC_DOWN_MS: u64 = 3_000;
/// The participant of `byzantine-participant` that signs contradicting votes.
pub const BYZANTINE_SITE: &str = "participant-1";
/// `split-brain`: how long the way into replica-0 stays cut while the scenario waits
/// for a ROUND from it (a resend comes within `retransmit_us`, 100 ms by default), how
/// long the links are whole between two tries, and how many tries it makes.
const STALE_ROUND_WAIT_MS: u64 = 300;
const STALE_RETRY_PAUSE_MS: u64 = 300;
const STALE_ATTEMPTS_MAX: u32 = 10;
/// `split-brain`: how long the load's client may take to come back to replica-0 before
/// a try (its outcomes in flight, at most a reply timeout, then a connect).
const RETURN_WAIT_MS_MAX: u64 = 10_000;
/// How often `split-brain` looks at the proxy's counts.
const STALE_POLL_MS: u64 = 2;
/// `split-brain`: how long, past the participants' pending timeout, the scenario waits
/// for the other replicas' first ELECT.
const ELECTION_WAIT_MS_MAX: u64 = 5_000;
/// `split-brain`: time for the other replicas' recovery (collect, round, decision) after
/// their first ELECT, before the heal.
const ELECTION_SETTLE_MS: u64 = 1_000;
/// `split-brain`: how long after the heal a REJECT must reach replica-0: its resends
/// (4 × `retransmit_us`), or its own election after a pending timeout, with room.
const REJECT_WAIT_MS_MAX: u64 = 10_000;
/// `split-brain`: how long the count goes on after the first REJECT.
const REJECT_SETTLE_MS: u64 = 500;
/// How often `byzantine-participant` looks for evidence on the replicas.
const EVIDENCE_POLL_MS: u64 = 20;

/// Every scenario, with its one-line description (`--list`).
pub const SCENARIOS: &[(&str, &str)] = &[
    ("participant-kill", "kill -9 participant-1 under load, restart it after 1 s"),
    ("replica-kill", "kill -9 replica-1 (not the one clients use), restart it after 1 s"),
    ("replica-kill-preferred", "kill -9 replica-0 (the clients' preferred replica) 10 times under load, restarting it each time: kill -> first commit through any replica"),
    ("sigstop-preferred", "SIGSTOP replica-0 for 2 s (a gray failure), then SIGCONT"),
    ("partition-minority", "cut {replica-2, participant-3} off from the rest"),
    ("partition-majority", "cut {replica-0, participant-0} (the clients' side) off from the rest"),
    ("participant-isolated", "cut participant-2 off from every site"),
    ("asymmetric-cut", "drop every frame from replica-0 to participant-1 (the other way works)"),
    ("split-brain", "cut replica-0 off from every site and freeze it with its rounds open while the others recover its batches; heal: its stale rounds are refused (REJECT)"),
    ("regions", "3 regions, 30 ms one-way between, 1 ms within; pipelining on, then off"),
    ("region-cut", "3 regions as above, then region 2 cut off: the other two decide what they hold"),
    ("frame-drop", "drop 1% of site frames at random (each drop resets its link)"),
    ("two-pc-coordinator-kill", "2PC: the coordinator dies after a PREPARE (failpoint); participants stay prepared until it returns"),
    ("coordinator-crash-after-prepare-sent", "replica-0 aborts right after sending a PREPARE (failpoint)"),
    ("coordinator-crash-after-precommit-logged", "replica-0 aborts once its PRE-COMMIT round is logged (failpoint)"),
    ("coordinator-crash-after-decision", "replica-0 aborts right after sending a COMMIT (failpoint)"),
    ("participant-crash-after-prepare-sent", "participant-1 aborts right after sending its votes (failpoint)"),
    ("participant-crash-after-precommit-logged", "participant-1 aborts right after acknowledging a PRE-COMMIT (failpoint)"),
    ("participant-crash-after-decision", "participant-1 aborts right after applying a COMMIT (failpoint)"),
    ("byzantine-participant", "participant-1 signs yes to one replica and no to another (--test-byzantine equivocate): evidence verified offline"),
];

/// The description of scenario `name`, if it is one.
pub fn describe(name: &str) -> Option<&'static str> {
    SCENARIOS
        .iter()
        .find(|(known, _)| *known == name)
        .map(|(_, description)| *description)
}

/// The protocol a scenario needs its cluster to run.
pub fn protocol_of(name: &str) -> ProtocolName {
    if name == "two-pc-coordinator-kill" {
        ProtocolName::TwoPhase
    } else {
        ProtocolName::ThreePhase
    }
}

/// The phases of a scenario: the engine settings of each (only `regions` has two).
pub fn phases(name: &str, config: &ClusterConfig) -> Vec<(String, ClusterConfig)> {
    if name == "regions" {
        let mut on = config.clone();
        on.engine.pipelining = true;
        let mut off = config.clone();
        off.engine.pipelining = false;
        return vec![("pipelining-on".into(), on), ("pipelining-off".into(), off)];
    }
    vec![(String::new(), config.clone())]
}

/// The extra node flags a scenario starts one site with (at the start of every phase;
/// a restart by the scenario or the heal starts it without them): a crash point, or
/// the Byzantine participant's lie.
pub fn node_flags(name: &str) -> Option<(&'static str, Vec<String>)> {
    if let Some(site) = byzantine_site(name) {
        return Some((site, vec!["--test-byzantine".into(), "equivocate".into()]));
    }
    crash_flags(name)
}

/// The participant that equivocates in scenario `name`, if it has one.
pub fn byzantine_site(name: &str) -> Option<&'static str> {
    (name == "byzantine-participant").then_some(BYZANTINE_SITE)
}

/// The crash-point flags a scenario starts a site with.
pub fn crash_flags(name: &str) -> Option<(&'static str, Vec<String>)> {
    let (site, point) = if name == "two-pc-coordinator-kill" {
        ("replica-0", "after-prepare-sent")
    } else if let Some(point) = name.strip_prefix("coordinator-crash-") {
        ("replica-0", point)
    } else if let Some(point) = name.strip_prefix("participant-crash-") {
        ("participant-1", point)
    } else {
        return None;
    };
    Some((
        site,
        vec!["--test-crash-at".into(), format!("{point}:{CRASH_HIT}")],
    ))
}

/// What scenario `name` checks on the stopped cluster of a phase beyond the bank check:
/// the Byzantine participant's evidence (every file verified offline, then cleared).
/// Adds its figures; returns why the scenario failed, if it did.
pub fn after_stop(
    name: &str,
    dir: &Path,
    config: &ClusterConfig,
    figures: &mut Map<String, Value>,
) -> Result<Option<String>, ChaosError> {
    let Some(participant) = byzantine_site(name) else {
        return Ok(None);
    };
    let report = super::evidence::check_and_clear(dir, config, participant)?;
    figures.insert("evidence_files".into(), json!(report.files));
    figures.insert("evidence_verified".into(), json!(report.verified));
    figures.insert("equivocations".into(), json!(report.equivocations));
    figures.insert("evidence_cleared".into(), json!(report.cleared));
    if report.files == 0 {
        return Ok(Some(format!(
            "no replica kept evidence against {participant}"
        )));
    }
    if report.verified < report.files {
        return Ok(Some(format!(
            "{} of {} evidence files failed `tricommit evidence verify`: {}",
            report.files - report.verified,
            report.files,
            report.refusals.join("; ")
        )));
    }
    Ok(None)
}

/// What a phase hands a scenario.
pub struct Phase<'a> {
    pub name: &'a str,
    pub config: &'a ClusterConfig,
    pub cluster: &'a mut ChaosCluster,
    pub proxy: &'a Proxy,
    pub load: &'a Load,
    pub seconds: u64,
    /// When the load started.
    pub started: Instant,
    /// When the fault was injected, and when it was healed (the runner heals what is
    /// left at the end of the phase if the scenario did not).
    pub fault_at: Option<Instant>,
    pub heal_at: Option<Instant>,
    /// Figures of this scenario, for the summary and the JSON.
    pub figures: Map<String, Value>,
    /// Kill instants of `replica-kill-preferred`.
    pub kills: Vec<Instant>,
}

impl Phase<'_> {
    fn warmup(&self) -> Duration {
        Duration::from_millis((self.seconds * 1000 / 4).max(1000))
    }

    /// A third of the run, and at least `FAULT_MS_MIN`: long enough for a vote timeout
    /// (whose floor is 500 ms) to let the rest of a batch commit while a site is cut.
    fn fault_window(&self) -> Duration {
        Duration::from_millis((self.seconds * 1000 / 3).max(FAULT_MS_MIN))
    }

    /// Sleeps until `offset` after the load started.
    fn until(&self, offset: Duration) {
        let due = self.started + offset;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
    }

    fn id(&self, name: &str) -> Site {
        self.config
            .site(name)
            .map(|entry| u16::from(entry.id.0))
            .unwrap_or_else(|_| panic!("the scenarios name only sites of the cluster: {name}"))
    }

    fn ids(&self, names: &[&str]) -> Vec<Site> {
        names.iter().map(|name| self.id(name)).collect()
    }

    fn all_ids(&self) -> Vec<Site> {
        self.config
            .site_entries()
            .iter()
            .map(|entry| u16::from(entry.id.0))
            .collect()
    }

    fn cut_off(&self, side: &[&str]) {
        let side = self.ids(side);
        let rest: Vec<Site> = self
            .all_ids()
            .into_iter()
            .filter(|id| !side.contains(id))
            .collect();
        self.proxy.update(|faults| faults.cut_between(&side, &rest));
    }

    /// Runs the scenario's fault inside the phase's load window.
    pub fn inject(&mut self) -> Result<(), ChaosError> {
        self.until(self.warmup());
        let window = self.fault_window();
        match self.name {
            "participant-kill" => self.kill_and_restart("participant-1"),
            "replica-kill" => self.kill_and_restart("replica-1"),
            "replica-kill-preferred" => self.kill_preferred_repeatedly(),
            "sigstop-preferred" => {
                self.fault_at = Some(Instant::now());
                self.cluster.pause("replica-0", true);
                std::thread::sleep(Duration::from_millis(SIGSTOP_MS));
                self.cluster.pause("replica-0", false);
                self.heal_at = Some(Instant::now());
                Ok(())
            }
            "partition-minority" => self.cut_for(&["replica-2", "participant-3"], window),
            "partition-majority" => self.cut_for(&["replica-0", "participant-0"], window),
            "participant-isolated" => self.cut_for(&["participant-2"], window),
            "split-brain" => self.split_brain(),
            "asymmetric-cut" => {
                let (from, to) = (self.id("replica-0"), self.id("participant-1"));
                self.fault_at = Some(Instant::now());
                self.proxy.update(|faults| {
                    faults.cut.insert((from, to));
                });
                std::thread::sleep(window);
                self.proxy.heal();
                self.heal_at = Some(Instant::now());
                Ok(())
            }
            "regions" => Ok(()),
            "region-cut" => self.cut_for(&["replica-2", "participant-2"], window),
            "frame-drop" => {
                self.fault_at = Some(Instant::now());
                self.proxy.update(|faults| faults.drop_ppm = DROP_PPM);
                std::thread::sleep(window);
                self.proxy.heal();
                self.heal_at = Some(Instant::now());
                Ok(())
            }
            "two-pc-coordinator-kill" => self.two_pc_block(),
            "byzantine-participant" => self.await_evidence(window),
            name if crash_flags(name).is_some() => self.await_crash(window),
            other => Err(ChaosError::Usage(format!("unknown scenario `{other}`"))),
        }
    }

    fn kill_and_restart(&mut self, site: &str) -> Result<(), ChaosError> {
        self.fault_at = Some(self.cluster.kill9(site));
        std::thread::sleep(Duration::from_millis(DOWN_MS));
        self.cluster.start(site, &[])?;
        self.heal_at = Some(Instant::now());
        Ok(())
    }

    fn cut_for(&mut self, side: &[&str], window: Duration) -> Result<(), ChaosError> {
        self.fault_at = Some(Instant::now());
        let committed = self.load.committed();
        self.cut_off(side);
        std::thread::sleep(window);
        self.figures.insert(
            "commits_during_fault".into(),
            json!(self.load.committed() - committed),
        );
        self.proxy.heal();
        self.heal_at = Some(Instant::now());
        Ok(())
    }

    /// The stale driver, made on purpose. Replica-0 is cut off while a PRE-COMMIT
    /// round of its own is open, and frozen (`SIGSTOP`) so that the round stays open: a
    /// running replica cut off alone gives its rounds up after `retransmits_max` resends
    /// and starts elections of its own, each numbered above the last, so that after a
    /// plain heal its messages outrank the others' elections and nothing is stale (the
    /// cut-only version of this scenario counted 20 ELECT parts and 0 REJECT parts).
    /// Frozen, it is the classic split brain: a coordinator that wakes up (a long
    /// pause, a migrated VM) still believing in election 1.
    ///
    /// 1. `open_stale_round`: only the way in is cut, until replica-0 sends a ROUND:
    ///    its acknowledgements are lost, so that round is open.
    /// 2. Every link to and from it is cut, and it is frozen.
    /// 3. The participants ask the other replicas for help after `pending_us`; those
    ///    run E3PC recovery (ELECT, which the participants join: election 2) and
    ///    decide. The scenario waits for the first ELECT, then `ELECTION_SETTLE_MS`.
    /// 4. Heal: the links come back and replica-0 resumes. Its overdue timer resends
    ///    its election-1 ROUND (or, once its resends are spent, its ELECT ties the
    ///    others' number, from another driver), and every site that joined the newer
    ///    election answers REJECT. The scenario fails unless a REJECT reaches replica-0
    ///    within `REJECT_WAIT_MS_MAX`.
    fn split_brain(&mut self) -> Result<(), ChaosError> {
        self.proxy.update(|faults| faults.count_elections = true);
        let stale = self.id("replica-0");
        let committed = self.load.committed();
        self.fault_at = Some(Instant::now());
        let opened = self.open_stale_round(stale).map(|tries| {
            self.figures
                .insert("stale_round_tries".into(), json!(tries));
        });
        if opened.is_ok() {
            self.cut_off(&["replica-0"]);
            self.cluster.pause("replica-0", true);
        }
        let elected = opened.and_then(|()| self.await_election());
        if elected.is_ok() {
            std::thread::sleep(Duration::from_millis(ELECTION_SETTLE_MS));
        }
        self.figures.insert(
            "commits_during_fault".into(),
            json!(self.load.committed() - committed),
        );
        let counters = self.proxy.counters();
        let (to_before, from_before) = counters.parts_of("REJECT", stale);
        self.proxy.heal();
        self.cluster.pause("replica-0", false);
        self.heal_at = Some(Instant::now());
        elected?;
        let deadline = Instant::now() + Duration::from_millis(REJECT_WAIT_MS_MAX);
        while counters.parts_of("REJECT", stale).0 == to_before && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(STALE_POLL_MS));
        }
        // The other stale resends of the same wake-up.
        std::thread::sleep(Duration::from_millis(REJECT_SETTLE_MS));
        let (to_after, from_after) = counters.parts_of("REJECT", stale);
        let (to, from) = (to_after - to_before, from_after - from_before);
        self.figures.insert(
            "elect_parts".into(),
            json!(counters.elect_parts.load(Ordering::Relaxed)),
        );
        self.figures.insert("rejects".into(), json!(to + from));
        self.figures
            .insert("rejects_to_replica_0".into(), json!(to));
        self.figures
            .insert("rejects_from_replica_0".into(), json!(from));
        if to == 0 {
            return Err(ChaosError::Scenario(format!(
                "no REJECT reached replica-0 within {} s of the heal: nothing refused its \
                 stale election-1 messages (fencing not shown)",
                REJECT_WAIT_MS_MAX / 1000
            )));
        }
        Ok(())
    }

    /// Cuts every link into `stale` and waits until it sends a ROUND: a round it sent
    /// after the cut (a new one, or the resend of one whose acknowledgements are
    /// missing) cannot be acknowledged, so it stays open. Without one within
    /// `STALE_ROUND_WAIT_MS`, the links are restored for `STALE_RETRY_PAUSE_MS` and the
    /// cut is tried again, `STALE_ATTEMPTS_MAX` times at most. Leaves the inbound cut
    /// in place on success; returns how many tries it took.
    fn open_stale_round(&self, stale: Site) -> Result<u32, ChaosError> {
        let others: Vec<Site> = self
            .all_ids()
            .into_iter()
            .filter(|&id| id != stale)
            .collect();
        let counters = self.proxy.counters();
        for tries in 1..=STALE_ATTEMPTS_MAX {
            // A try whose cut outlasted the client's reply timeout (a loaded machine)
            // moved the client to another replica, and replica-0 then opens no batch.
            if !self
                .load
                .return_to_preferred(Duration::from_millis(RETURN_WAIT_MS_MAX))
            {
                return Err(ChaosError::Scenario(format!(
                    "the load's client did not return to replica-0 within {RETURN_WAIT_MS_MAX} ms"
                )));
            }
            let (_, rounds_before) = counters.parts_of("ROUND", stale);
            self.proxy.update(|faults| {
                for &other in &others {
                    faults.cut.insert((other, stale));
                }
            });
            let deadline = Instant::now() + Duration::from_millis(STALE_ROUND_WAIT_MS);
            while Instant::now() < deadline {
                if counters.parts_of("ROUND", stale).1 > rounds_before {
                    return Ok(tries);
                }
                std::thread::sleep(Duration::from_millis(STALE_POLL_MS));
            }
            self.proxy.heal();
            std::thread::sleep(Duration::from_millis(STALE_RETRY_PAUSE_MS));
        }
        Err(ChaosError::Scenario(format!(
            "replica-0 sent no PRE-COMMIT round in {STALE_ATTEMPTS_MAX} tries of {STALE_ROUND_WAIT_MS} ms"
        )))
    }

    /// Waits until the other replicas start recovery of replica-0's batches: an ELECT
    /// part relayed, within the participants' pending timeout and `ELECTION_WAIT_MS_MAX`.
    fn await_election(&self) -> Result<(), ChaosError> {
        let counters = self.proxy.counters();
        let before = counters.elect_parts.load(Ordering::Relaxed);
        let wait =
            Duration::from_millis(self.config.timeouts.pending_us / 1000 + ELECTION_WAIT_MS_MAX);
        let deadline = Instant::now() + wait;
        while counters.elect_parts.load(Ordering::Relaxed) == before {
            if Instant::now() > deadline {
                return Err(ChaosError::Scenario(format!(
                    "the other replicas ran no election within {} s of cutting replica-0 off",
                    wait.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(STALE_POLL_MS));
        }
        Ok(())
    }

    fn kill_preferred_repeatedly(&mut self) -> Result<(), ChaosError> {
        for _ in 0..PREFERRED_KILLS {
            let committed = self.load.committed();
            let at = self.cluster.kill9("replica-0");
            self.kills.push(at);
            self.fault_at.get_or_insert(at);
            self.cluster.start("replica-0", &[])?;
            let deadline = at + Duration::from_millis(KILL_RECOVERY_MS_MAX);
            while self.load.committed() <= committed {
                if Instant::now() > deadline {
                    return Err(ChaosError::Scenario(format!(
                        "no commit within {} s of a kill of replica-0",
                        KILL_RECOVERY_MS_MAX / 1000
                    )));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            // Some load between kills, so that each kill hits batches in flight.
            std::thread::sleep(Duration::from_millis(300));
        }
        self.heal_at = Some(Instant::now());
        Ok(())
    }

    /// Waits for the failpoint to abort its site, keeps it down for `DOWN_MS`, restarts
    /// it.
    fn await_crash(&mut self, window: Duration) -> Result<(), ChaosError> {
        let site = self.await_crash_only(window)?;
        std::thread::sleep(Duration::from_millis(DOWN_MS));
        self.cluster.start(site, &[])?;
        self.heal_at = Some(Instant::now());
        Ok(())
    }

    /// Waits (within three `window`s) for the failpoint to abort its site; returns the
    /// site.
    fn await_crash_only(&mut self, window: Duration) -> Result<&'static str, ChaosError> {
        let (site, _) = crash_flags(self.name).expect("a crash scenario");
        let deadline = Instant::now() + window * 3;
        while !self.cluster.reap_if_exited(site) {
            if Instant::now() > deadline {
                return Err(ChaosError::Scenario(format!(
                    "{site} did not reach its crash point within {} s",
                    (window * 3).as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.fault_at = Some(Instant::now());
        Ok(site)
    }

    /// The liar lies from its first vote: waits (within three `window`s) until a replica
    /// kept evidence against it, and reports when the first file was written.
    fn await_evidence(&mut self, window: Duration) -> Result<(), ChaosError> {
        self.fault_at = Some(self.started);
        let deadline = Instant::now() + window * 3;
        let found = loop {
            let found = super::evidence::files(self.cluster.dir(), self.config);
            if !found.is_empty() {
                break found;
            }
            if Instant::now() > deadline {
                return Err(ChaosError::Scenario(format!(
                    "no replica kept evidence against {BYZANTINE_SITE} within {} s",
                    (window * 3).as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(EVIDENCE_POLL_MS));
        };
        // The files' times against the load's start, on the wall clock.
        let started_wall = SystemTime::now() - self.started.elapsed();
        let first = found
            .iter()
            .filter_map(|file| std::fs::metadata(file).and_then(|m| m.modified()).ok())
            .min();
        if let Some(since) = first.and_then(|at| at.duration_since(started_wall).ok()) {
            self.figures
                .insert("evidence_detected_ms".into(), json!(super::ms(since)));
        }
        Ok(())
    }

    /// 2PC's block, shown on the logs: the coordinator dies right after it sent a
    /// PREPARE (its crash point: the participants vote yes on a batch whose outcome
    /// only it can give), the participants
    /// are stopped (cleanly) while it is down, and their logs are read: what they
    /// voted yes on and never learned the outcome of is still in doubt. Then everyone
    /// returns and the check after the run shows every leg decided.
    fn two_pc_block(&mut self) -> Result<(), ChaosError> {
        self.await_crash_only(self.fault_window())?;
        std::thread::sleep(Duration::from_millis(TWO_PC_DOWN_MS));
        let participants: Vec<String> = self
            .cluster
            .names()
            .into_iter()
            .filter(|name| name.starts_with("participant-"))
            .collect();
        self.cluster.stop_sites(&participants);
        let held = super::check::Snapshot::read(self.cluster.dir(), self.config)?;
        self.figures.insert(
            "in_doubt_legs_while_coordinator_down".into(),
            json!(held.in_doubt()),
        );
        self.cluster.heal()?;
        self.heal_at = Some(Instant::now());
        Ok(())
    }
}

/// The proxy's faults at the start of a phase: the regions' delays, or none.
pub fn topology(name: &str, config: &ClusterConfig) -> Faults {
    let mut faults = Faults::default();
    if name != "regions" && name != "region-cut" {
        return faults;
    }
    let entries = config.site_entries();
    for a in &entries {
        for b in &entries {
            if a.id != b.id {
                let delay_ms = if region_of(&a.name) == region_of(&b.name) {
                    LOCAL_DELAY_MS
                } else {
                    REGION_DELAY_MS
                };
                faults
                    .delay_ms
                    .insert((u16::from(a.id.0), u16::from(b.id.0)), delay_ms);
            }
        }
    }
    faults
}

/// The region of a site: replica-i and participant-i are in region i mod 3.
pub fn region_of(name: &str) -> u64 {
    name.rsplit('-')
        .next()
        .and_then(|index| index.parse::<u64>().ok())
        .map_or(0, |index| index % 3)
}
