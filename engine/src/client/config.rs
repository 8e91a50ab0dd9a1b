//! The cluster description: `DIR/cluster.toml` and `DIR/cluster.key` (DESIGN §5).
//!
//! Nodes, `cluster up`, the network client and `ledger dump --cluster` all read the same
//! file, so it is parsed and checked here once. Every table denies unknown keys, and
//! every value is checked against the engine's limits, so that a typo is an error that
//! names the key instead of a default silently taking its place.
//!
//! ```toml
//! cluster_id = 4242
//! replicas = 3
//! participants = 4
//!
//! [ledger]
//! accounts = 100000
//! initial_balance = 1000000
//!
//! [sites]
//! replica-0 = "127.0.0.1:7400"
//! participant-0 = "127.0.0.1:7403"
//! ```
//!
//! `[engine]`, `[timeouts]` and `[transport]` are optional; `cluster init` writes them
//! out with their defaults so that they can be tuned in place.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ledger::{ACCOUNTS_MAX, RESERVATIONS_MAX_DEFAULT, RESERVATIONS_MAX_LIMIT};
use crate::pipeline::bounds::{
    BATCH_DELAY_US_DEFAULT, BATCH_DELAY_US_LIMIT, BATCH_TXNS_DEFAULT, BATCH_TXNS_MAX,
    INTAKE_HIGH_WATER_TXNS, INTAKE_TXNS_MAX,
};
use crate::proto::SiteId;
use crate::runtime::{Timeouts, PARTICIPANTS_MAX, REPLICAS_DEFAULT, REPLICAS_MAX};

/// The configuration file's name in a cluster directory.
pub const CLUSTER_FILE: &str = "cluster.toml";
/// The shared secret's file name in a cluster directory.
pub const KEY_FILE: &str = "cluster.key";
/// Bytes of the shared secret.
pub const KEY_BYTES: usize = 32;
/// A configuration file larger than this is not one.
pub const CLUSTER_FILE_BYTES_MAX: u64 = 1 << 20;
/// The default first port of `cluster init`; site `i` (replicas first) listens on
/// `base_port + i`.
pub const BASE_PORT_DEFAULT: u16 = 7400;
/// The largest timeout the file accepts, in microseconds (one hour): a larger one is a
/// unit mistake, not a choice.
pub const TIMEOUT_US_MAX: u64 = 3_600_000_000;
/// The largest transport interval the file accepts, in milliseconds (one minute).
pub const TRANSPORT_MS_MAX: u64 = 60_000;
/// Bounds on the segment size, in MiB.
pub const SEGMENT_MIB_MAX: u64 = 1024;

/// Why a cluster directory could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is {bytes} bytes, more than the {CLUSTER_FILE_BYTES_MAX} a cluster file may have"
    )]
    TooLarge { path: PathBuf, bytes: u64 },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: `{key}`: {reason}")]
    Invalid {
        path: PathBuf,
        key: String,
        reason: String,
    },
    #[error("{path}: the key must be exactly {KEY_BYTES} bytes, not {bytes}")]
    KeyLength { path: PathBuf, bytes: u64 },
    #[error("{path}: the key is readable by others (mode {mode:o}); chmod 600 it")]
    KeyMode { path: PathBuf, mode: u32 },
    #[error("unknown site `{name}`; this cluster has {known}")]
    UnknownSite { name: String, known: String },
    #[error("{0} already holds a cluster (or other files); choose an empty or new directory")]
    AlreadyInitialised(PathBuf),
}

/// The ledgers every participant starts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerSection {
    pub accounts: u64,
    pub initial_balance: i64,
    #[serde(default = "reservations_default")]
    pub reservations_max: u64,
}

fn reservations_default() -> u64 {
    RESERVATIONS_MAX_DEFAULT
}

/// The sync backend, as the file names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SyncName {
    Msync,
    Fdatasync,
    IoUring,
}

/// The commit protocol, as the file names it (`engine.protocol`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProtocolName {
    /// Three-phase commit with E3PC termination (the product).
    #[default]
    #[serde(rename = "3pc")]
    ThreePhase,
    /// Two-phase commit, the baseline: blocks while its coordinator is down. A data
    /// directory keeps the protocol it was created with.
    #[serde(rename = "2pc")]
    TwoPhase,
}

/// The engine settings of every site.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSection {
    pub batch_txns_max: u64,
    pub batch_delay_us_max: u64,
    pub sync: SyncName,
    pub segment_mib: u64,
    /// Checkpoint a replica's log beyond this many segments; 0 never does.
    pub log_segments_max: u64,
    /// The opening replica's intake: above this many transactions in flight, `Normal`
    /// submissions are answered `Busy` (network clients included) ...
    pub intake_high_water_txns: u64,
    /// ... and above this many, every submission is.
    /// `1 <= intake_high_water_txns <= intake_capacity_txns <= INTAKE_TXNS_MAX`.
    pub intake_capacity_txns: u64,
    /// Off: one batch in flight at a time (the chaos runner's regions comparison).
    pub pipelining: bool,
    /// `"3pc"` (default) or `"2pc"` (the blocking baseline).
    pub protocol: ProtocolName,
}

impl Default for EngineSection {
    fn default() -> EngineSection {
        EngineSection {
            batch_txns_max: BATCH_TXNS_DEFAULT as u64,
            batch_delay_us_max: BATCH_DELAY_US_DEFAULT,
            sync: SyncName::IoUring,
            segment_mib: 64,
            log_segments_max: u64::from(crate::runtime::LOG_SEGMENTS_MAX_DEFAULT),
            intake_high_water_txns: INTAKE_HIGH_WATER_TXNS as u64,
            intake_capacity_txns: INTAKE_TXNS_MAX as u64,
            pipelining: true,
            protocol: ProtocolName::ThreePhase,
        }
    }
}

/// What a network client (`RemoteClient`) of the cluster does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientSection {
    /// The replica a client sends to first (any replica opens batches); on failure it
    /// fails over to the next one in ring order.
    pub preferred_replica: u64,
}

/// The links' timers, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransportSection {
    pub heartbeat_interval_ms: u64,
    /// A peer heard from for this long is marked down.
    pub peer_silent_ms_max: u64,
    pub reconnect_backoff_ms_min: u64,
    pub reconnect_backoff_ms_max: u64,
}

impl Default for TransportSection {
    fn default() -> TransportSection {
        TransportSection {
            heartbeat_interval_ms: 100,
            peer_silent_ms_max: 1_000,
            reconnect_backoff_ms_min: 10,
            reconnect_backoff_ms_max: 1_000,
        }
    }
}

/// `cluster.toml`, parsed and checked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Names this cluster on every frame, so that two clusters never mix. At most
    /// `i64::MAX` (a TOML integer).
    pub cluster_id: u64,
    pub replicas: u64,
    pub participants: u64,
    pub ledger: LedgerSection,
    #[serde(default)]
    pub engine: EngineSection,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub transport: TransportSection,
    #[serde(default)]
    pub client: ClientSection,
    /// Every site's address, by name: where peers and clients dial it.
    pub sites: BTreeMap<String, String>,
    /// Every participant's public vote key (64 hex digits), by site name. Present, the
    /// participants sign their votes and the replicas count only votes that verify;
    /// absent (a cluster made before signed votes), nobody signs until
    /// `tricommit cluster vote-keys DIR` adds them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vote_keys: BTreeMap<String, String>,
    /// Where a site binds, by name, when that differs from the address peers dial
    /// (the chaos runner's link proxy sits at `sites`, the node behind it). Optional:
    /// a site missing here binds its `sites` address.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub listen: BTreeMap<String, String>,
}

/// One site of the cluster, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteEntry {
    pub name: String,
    pub id: SiteId,
    pub addr: SocketAddr,
}

/// The name of replica `index`.
pub fn replica_name(index: usize) -> String {
    format!("replica-{index}")
}

/// The name of participant `index` (its ledger index).
pub fn participant_name(index: usize) -> String {
    format!("participant-{index}")
}

/// The answers of `cluster init`.
#[derive(Clone, Debug)]
pub struct InitOptions {
    pub replicas: u64,
    pub participants: u64,
    pub accounts: u64,
    pub initial_balance: i64,
    pub host: String,
    pub base_port: u16,
}

impl Default for InitOptions {
    fn default() -> InitOptions {
        InitOptions {
            replicas: REPLICAS_DEFAULT as u64,
            participants: 4,
            accounts: 100_000,
            initial_balance: 1_000_000,
            host: "127.0.0.1".into(),
            base_port: BASE_PORT_DEFAULT,
        }
    }
}

impl ClusterConfig {
    /// A fresh configuration from `cluster init`'s answers, checked.
    pub fn from_init(options: &InitOptions, cluster_id: u64) -> Result<ClusterConfig, String> {
        let sites_total = options.replicas + options.participants;
        let last_port = u64::from(options.base_port) + sites_total.saturating_sub(1);
        if last_port > u64::from(u16::MAX) || options.base_port == 0 {
            return Err(format!(
                "--base-port {} leaves no room for {sites_total} ports",
                options.base_port
            ));
        }
        let mut sites = BTreeMap::new();
        for index in 0..sites_total {
            let name = if index < options.replicas {
                replica_name(index as usize)
            } else {
                participant_name((index - options.replicas) as usize)
            };
            let port = options.base_port + index as u16;
            sites.insert(name, format_addr(&options.host, port));
        }
        let config = ClusterConfig {
            cluster_id: cluster_id & i64::MAX as u64,
            replicas: options.replicas,
            participants: options.participants,
            ledger: LedgerSection {
                accounts: options.accounts,
                initial_balance: options.initial_balance,
                reservations_max: RESERVATIONS_MAX_DEFAULT,
            },
            engine: EngineSection::default(),
            timeouts: Timeouts::default(),
            transport: TransportSection::default(),
            client: ClientSection::default(),
            sites,
            vote_keys: BTreeMap::new(),
            listen: BTreeMap::new(),
        };
        config
            .check()
            .map_err(|(key, reason)| format!("{key}: {reason}"))?;
        Ok(config)
    }

    /// Parses and checks the text of a `cluster.toml` read from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<ClusterConfig, ConfigError> {
        let config: ClusterConfig = toml::from_str(text).map_err(|error| ConfigError::Parse {
            path: path.to_owned(),
            message: error.to_string().trim_end().replace('\n', "\n  "),
        })?;
        config
            .check()
            .map_err(|(key, reason)| ConfigError::Invalid {
                path: path.to_owned(),
                key,
                reason,
            })?;
        Ok(config)
    }

    /// Reads `dir/cluster.toml`.
    pub fn load(dir: &Path) -> Result<ClusterConfig, ConfigError> {
        let path = dir.join(CLUSTER_FILE);
        let text = read_bounded(&path, CLUSTER_FILE_BYTES_MAX)?;
        let text = String::from_utf8(text).map_err(|_| ConfigError::Parse {
            path: path.clone(),
            message: "the file is not UTF-8 text".into(),
        })?;
        ClusterConfig::parse(&text, &path)
    }

    /// The TOML text of this configuration.
    pub fn render(&self) -> String {
        let body = toml::to_string(self).expect("a cluster configuration always serializes");
        format!(
            "# A tricommit cluster (DESIGN §5), written by `tricommit cluster init`.\n\
             # Site i listens on its address; replicas are site ids 0.., participants follow.\n\
             {body}"
        )
    }

    /// Every site, replicas first, in site-id order.
    pub fn site_entries(&self) -> Vec<SiteEntry> {
        let names = (0..self.replicas as usize)
            .map(replica_name)
            .chain((0..self.participants as usize).map(participant_name));
        names
            .enumerate()
            .map(|(id, name)| {
                let addr = self.sites[&name]
                    .parse()
                    .expect("checked when the configuration was read");
                SiteEntry {
                    name,
                    id: SiteId(id as u8),
                    addr,
                }
            })
            .collect()
    }

    /// Where site `entry` binds: its `[listen]` address, or else its `sites` one.
    pub fn listen_addr(&self, entry: &SiteEntry) -> SocketAddr {
        self.listen
            .get(&entry.name)
            .map(|text| {
                text.parse()
                    .expect("checked when the configuration was read")
            })
            .unwrap_or(entry.addr)
    }

    /// The site called `name`.
    pub fn site(&self, name: &str) -> Result<SiteEntry, ConfigError> {
        self.site_entries()
            .into_iter()
            .find(|entry| entry.name == name)
            .ok_or_else(|| ConfigError::UnknownSite {
                name: name.to_owned(),
                known: self.known_sites(),
            })
    }

    fn known_sites(&self) -> String {
        let replicas = format!("replica-0..replica-{}", self.replicas - 1);
        let participants = format!("participant-0..participant-{}", self.participants - 1);
        format!("{replicas} and {participants}")
    }

    /// Checks every value; on failure names the key and says why.
    fn check(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, reason: String| Err((key.to_owned(), reason));
        if self.cluster_id > i64::MAX as u64 {
            return bad("cluster_id", "must be at most i64::MAX".into());
        }
        if !(1..=REPLICAS_MAX as u64).contains(&self.replicas) {
            return bad("replicas", format!("must be 1..={REPLICAS_MAX}"));
        }
        if !(2..=PARTICIPANTS_MAX as u64).contains(&self.participants) {
            return bad("participants", format!("must be 2..={PARTICIPANTS_MAX}"));
        }
        self.check_ledger()?;
        self.check_engine()?;
        self.check_timeouts()?;
        self.check_transport()?;
        if self.client.preferred_replica >= self.replicas {
            return bad(
                "client.preferred_replica",
                format!("must be below replicas ({})", self.replicas),
            );
        }
        self.check_sites()?;
        self.check_vote_keys()
    }

    /// `[vote_keys]` is absent, or names every participant (and nothing else) with a
    /// valid, distinct public key.
    fn check_vote_keys(&self) -> Result<(), (String, String)> {
        if self.vote_keys.is_empty() {
            return Ok(());
        }
        let participants: Vec<String> = (0..self.participants as usize)
            .map(participant_name)
            .collect();
        for name in self.vote_keys.keys() {
            if !participants.contains(name) {
                return Err((
                    format!("vote_keys.{name}"),
                    "only participants vote: name participant-0.. only".into(),
                ));
            }
        }
        let mut seen: BTreeMap<[u8; 32], &str> = BTreeMap::new();
        for name in &participants {
            let Some(text) = self.vote_keys.get(name) else {
                return Err((
                    format!("vote_keys.{name}"),
                    "is missing: every participant needs a key once any has one \
                     (`tricommit cluster vote-keys DIR` writes them all)"
                        .into(),
                ));
            };
            let key = crate::sign::parse_public_key(text)
                .map_err(|error| (format!("vote_keys.{name}"), error.to_string()))?;
            if let Some(other) = seen.insert(key.to_bytes(), name) {
                return Err((
                    format!("vote_keys.{name}"),
                    format!("is also the key of {other}"),
                ));
            }
        }
        Ok(())
    }

    /// The public side of signed votes, or `None` when this cluster does not sign.
    pub fn vote_keys(&self) -> Option<crate::sign::VoteKeys> {
        if self.vote_keys.is_empty() {
            return None;
        }
        let entries = self.site_entries();
        let keys = entries
            .iter()
            .map(|site| {
                self.vote_keys
                    .get(&site.name)
                    .map(|text| crate::sign::parse_public_key(text).expect("checked when read"))
            })
            .collect();
        Some(crate::sign::VoteKeys {
            cluster_id: self.cluster_id,
            names: entries.iter().map(|site| site.name.clone()).collect(),
            keys,
            replicas: entries
                .iter()
                .take(self.replicas as usize)
                .map(|site| site.id)
                .collect(),
        })
    }

    fn check_ledger(&self) -> Result<(), (String, String)> {
        let ledger = &self.ledger;
        if !(1..=ACCOUNTS_MAX).contains(&ledger.accounts) {
            return Err((
                "ledger.accounts".into(),
                format!("must be 1..={ACCOUNTS_MAX}"),
            ));
        }
        if ledger.initial_balance < 0 {
            return Err(("ledger.initial_balance".into(), "must be >= 0".into()));
        }
        // The sum of every balance must fit the bank check's arithmetic with room.
        let total = i128::from(ledger.initial_balance)
            * i128::from(ledger.accounts)
            * i128::from(self.participants as u32);
        if total > i128::from(i64::MAX) {
            return Err((
                "ledger.initial_balance".into(),
                "the sum of all balances would not fit in 64 bits".into(),
            ));
        }
        if !(1..=RESERVATIONS_MAX_LIMIT).contains(&ledger.reservations_max) {
            return Err((
                "ledger.reservations_max".into(),
                format!("must be 1..={RESERVATIONS_MAX_LIMIT}"),
            ));
        }
        Ok(())
    }

    fn check_engine(&self) -> Result<(), (String, String)> {
        let engine = &self.engine;
        if !(1..=BATCH_TXNS_MAX as u64).contains(&engine.batch_txns_max) {
            return Err((
                "engine.batch_txns_max".into(),
                format!("must be 1..={BATCH_TXNS_MAX}"),
            ));
        }
        if engine.batch_delay_us_max > BATCH_DELAY_US_LIMIT {
            return Err((
                "engine.batch_delay_us_max".into(),
                format!("must be at most {BATCH_DELAY_US_LIMIT}"),
            ));
        }
        if !(1..=SEGMENT_MIB_MAX).contains(&engine.segment_mib) {
            return Err((
                "engine.segment_mib".into(),
                format!("must be 1..={SEGMENT_MIB_MAX}"),
            ));
        }
        if engine.log_segments_max > u64::from(u32::MAX) {
            return Err(("engine.log_segments_max".into(), "is too large".into()));
        }
        if !(1..=INTAKE_TXNS_MAX as u64).contains(&engine.intake_capacity_txns) {
            return Err((
                "engine.intake_capacity_txns".into(),
                format!("must be 1..={INTAKE_TXNS_MAX}"),
            ));
        }
        if !(1..=engine.intake_capacity_txns).contains(&engine.intake_high_water_txns) {
            return Err((
                "engine.intake_high_water_txns".into(),
                format!(
                    "must be 1..=engine.intake_capacity_txns ({})",
                    engine.intake_capacity_txns
                ),
            ));
        }
        Ok(())
    }

    fn check_timeouts(&self) -> Result<(), (String, String)> {
        let t = &self.timeouts;
        let all = [
            ("vote_us", t.vote_us),
            ("vote_min_us", t.vote_min_us),
            ("vote_max_us", t.vote_max_us),
            ("retransmit_us", t.retransmit_us),
            ("pending_us", t.pending_us),
            ("recovery_stagger_us", t.recovery_stagger_us),
            ("collect_us", t.collect_us),
        ];
        for (name, value) in all {
            if !(1..=TIMEOUT_US_MAX).contains(&value) {
                return Err((
                    format!("timeouts.{name}"),
                    format!("must be 1..={TIMEOUT_US_MAX} µs"),
                ));
            }
        }
        if t.vote_min_us > t.vote_max_us {
            return Err((
                "timeouts.vote_min_us".into(),
                "must not exceed timeouts.vote_max_us".into(),
            ));
        }
        Ok(())
    }

    fn check_transport(&self) -> Result<(), (String, String)> {
        let t = &self.transport;
        let all = [
            ("heartbeat_interval_ms", t.heartbeat_interval_ms),
            ("peer_silent_ms_max", t.peer_silent_ms_max),
            ("reconnect_backoff_ms_min", t.reconnect_backoff_ms_min),
            ("reconnect_backoff_ms_max", t.reconnect_backoff_ms_max),
        ];
        for (name, value) in all {
            if !(1..=TRANSPORT_MS_MAX).contains(&value) {
                return Err((
                    format!("transport.{name}"),
                    format!("must be 1..={TRANSPORT_MS_MAX} ms"),
                ));
            }
        }
        if t.peer_silent_ms_max <= t.heartbeat_interval_ms {
            return Err((
                "transport.peer_silent_ms_max".into(),
                "must exceed transport.heartbeat_interval_ms".into(),
            ));
        }
        if t.reconnect_backoff_ms_min > t.reconnect_backoff_ms_max {
            return Err((
                "transport.reconnect_backoff_ms_min".into(),
                "must not exceed transport.reconnect_backoff_ms_max".into(),
            ));
        }
        Ok(())
    }

    fn check_sites(&self) -> Result<(), (String, String)> {
        let expected: Vec<String> = (0..self.replicas as usize)
            .map(replica_name)
            .chain((0..self.participants as usize).map(participant_name))
            .collect();
        for name in self.sites.keys() {
            if !expected.contains(name) {
                return Err((
                    format!("sites.{name}"),
                    format!("is not a site of this cluster ({})", self.known_sites()),
                ));
            }
        }
        let mut bound: BTreeMap<SocketAddr, &str> = BTreeMap::new();
        for (name, text) in &self.listen {
            let key = format!("listen.{name}");
            if !expected.contains(name) {
                return Err((
                    key,
                    format!("is not a site of this cluster ({})", self.known_sites()),
                ));
            }
            match text.parse::<SocketAddr>() {
                Ok(addr) if addr.port() != 0 => {
                    if let Some(other) = bound.insert(addr, name) {
                        return Err((key, format!("{addr} is also where {other} binds")));
                    }
                }
                _ => {
                    return Err((
                        key,
                        format!(
                            "`{text}` is not an address HOST:PORT with a numeric host and a port"
                        ),
                    ))
                }
            }
        }
        let mut seen: BTreeMap<SocketAddr, &str> = BTreeMap::new();
        for name in &expected {
            let Some(text) = self.sites.get(name) else {
                return Err((format!("sites.{name}"), "is missing".into()));
            };
            let addr: SocketAddr = text.parse().map_err(|_| {
                (
                    format!("sites.{name}"),
                    format!("`{text}` is not an address HOST:PORT with a numeric host"),
                )
            })?;
            if addr.port() == 0 {
                return Err((format!("sites.{name}"), "port 0 is not an address".into()));
            }
            if let Some(other) = seen.insert(addr, name) {
                return Err((
                    format!("sites.{name}"),
                    format!("{addr} is also the address of {other}"),
                ));
            }
        }
        Ok(())
    }
}

fn format_addr(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn read_bounded(path: &Path, bytes_max: u64) -> Result<Vec<u8>, ConfigError> {
    let read_error = |source| ConfigError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let bytes = file.metadata().map_err(read_error)?.len();
    if bytes > bytes_max {
        return Err(ConfigError::TooLarge {
            path: path.to_owned(),
            bytes,
        });
    }
    let mut text = Vec::with_capacity(bytes as usize);
    file.take(bytes_max + 1)
        .read_to_end(&mut text)
        .map_err(read_error)?;
    Ok(text)
}

/// Reads `dir/cluster.key`: exactly 32 bytes, readable by its owner only.
pub fn load_key(dir: &Path) -> Result<[u8; KEY_BYTES], ConfigError> {
    let path = dir.join(KEY_FILE);
    let metadata = std::fs::metadata(&path).map_err(|source| ConfigError::Read {
        path: path.clone(),
        source,
    })?;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(ConfigError::KeyMode { path, mode });
    }
    let bytes = read_bounded(&path, KEY_BYTES as u64)?;
    <[u8; KEY_BYTES]>::try_from(bytes.as_slice()).map_err(|_| ConfigError::KeyLength {
        path: path.clone(),
        bytes: bytes.len() as u64,
    })
}

/// 32 bytes from the operating system's random source.
pub fn random_key() -> std::io::Result<[u8; KEY_BYTES]> {
    let mut key = [0u8; KEY_BYTES];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut key)?;
    Ok(key)
}

/// Writes `bytes` to `dir/name` atomically (temporary file with `mode`, sync, rename,
/// sync the directory): a crash leaves the whole file or none.
pub fn write_atomically(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    mode: u32,
) -> Result<(), ConfigError> {
    let path = dir.join(name);
    let temporary = dir.join(format!(".{name}.tmp"));
    let write_error = |source| ConfigError::Write {
        path: path.clone(),
        source,
    };
    let _ = std::fs::remove_file(&temporary);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temporary)
        .map_err(write_error)?;
    file.write_all(bytes).map_err(write_error)?;
    file.sync_all().map_err(write_error)?;
    drop(file);
    std::fs::rename(&temporary, &path).map_err(write_error)?;
    std::fs::File::open(dir)
        .and_then(|directory| directory.sync_all())
        .map_err(write_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ClusterConfig {
        ClusterConfig::from_init(&InitOptions::default(), 77).expect("defaults are valid")
    }

    #[test]
    fn a_rendered_configuration_parses_back_to_itself() {
        // Proves that what `cluster init` writes is what every node reads.
        let config = sample();
        let parsed = ClusterConfig::parse(&config.render(), Path::new("c.toml")).unwrap();
        assert_eq!(parsed, config);
        assert_eq!(parsed.site_entries().len(), 7);
        assert_eq!(parsed.site("participant-0").unwrap().id, SiteId(3));
    }

    #[test]
    fn an_unknown_key_is_an_error_that_names_it() {
        // Proves that a misspelt key is refused, not silently defaulted.
        let text = sample()
            .render()
            .replace("[timeouts]", "[timeouts]\nvote_ms = 5");
        let error = ClusterConfig::parse(&text, Path::new("c.toml")).unwrap_err();
        assert!(error.to_string().contains("vote_ms"), "{error}");
    }

    #[test]
    fn a_bad_value_names_its_key() {
        // Proves that out-of-range values and bad addresses are errors naming the key.
        let text = sample().render().replace("replicas = 3", "replicas = 9");
        let error = ClusterConfig::parse(&text, Path::new("c.toml")).unwrap_err();
        assert!(error.to_string().contains("`replicas`"), "{error}");
        let text = sample()
            .render()
            .replace("\"127.0.0.1:7403\"", "\"localhost:x\"");
        let error = ClusterConfig::parse(&text, Path::new("c.toml")).unwrap_err();
        assert!(error.to_string().contains("sites.participant-0"), "{error}");
    }

    #[test]
    fn intake_limits_are_read_and_checked() {
        // Proves that the opening replica's intake is configurable in `[engine]`, and
        // that limits out of order or above the engine's bound name their key.
        let rendered = sample().render();
        let capacity = format!("intake_capacity_txns = {INTAKE_TXNS_MAX}");
        let high_water = format!("intake_high_water_txns = {INTAKE_HIGH_WATER_TXNS}");
        assert!(rendered.contains(&capacity) && rendered.contains(&high_water));
        let tiny = rendered
            .replace(&capacity, "intake_capacity_txns = 4")
            .replace(&high_water, "intake_high_water_txns = 2");
        let parsed = ClusterConfig::parse(&tiny, Path::new("c.toml")).unwrap();
        assert_eq!(
            (
                parsed.engine.intake_high_water_txns,
                parsed.engine.intake_capacity_txns
            ),
            (2, 4)
        );
        let cases = [
            (
                rendered.replace(&high_water, "intake_high_water_txns = 0"),
                "engine.intake_high_water_txns",
            ),
            (
                tiny.replace("intake_high_water_txns = 2", "intake_high_water_txns = 5"),
                "engine.intake_high_water_txns",
            ),
            (
                rendered.replace(&capacity, "intake_capacity_txns = 0"),
                "engine.intake_capacity_txns",
            ),
            (
                rendered.replace(
                    &capacity,
                    &format!("intake_capacity_txns = {}", INTAKE_TXNS_MAX + 1),
                ),
                "engine.intake_capacity_txns",
            ),
        ];
        for (text, key) in cases {
            let error = ClusterConfig::parse(&text, Path::new("c.toml")).unwrap_err();
            assert!(error.to_string().contains(key), "{key}: {error}");
        }
    }

    #[test]
    fn listen_addresses_and_engine_modes_parse_and_are_checked() {
        // Proves that `[listen]` moves where a site binds (not where peers dial), that
        // `engine.protocol` and `engine.pipelining` parse, and that a bad or unknown
        // `[listen]` entry is an error naming its key.
        let text = sample()
            .render()
            .replace("pipelining = true", "pipelining = false")
            .replace("protocol = \"3pc\"", "protocol = \"2pc\"")
            + "\n[listen]\nreplica-0 = \"127.0.0.1:9400\"\n";
        let parsed = ClusterConfig::parse(&text, Path::new("c.toml")).unwrap();
        let entry = parsed.site("replica-0").unwrap();
        assert_eq!(parsed.listen_addr(&entry).to_string(), "127.0.0.1:9400");
        assert_eq!(entry.addr.to_string(), "127.0.0.1:7400");
        let other = parsed.site("replica-1").unwrap();
        assert_eq!(parsed.listen_addr(&other), other.addr);
        assert_eq!(parsed.engine.protocol, ProtocolName::TwoPhase);
        assert!(!parsed.engine.pipelining);
        assert_eq!(
            ClusterConfig::parse(&parsed.render(), Path::new("c.toml")).unwrap(),
            parsed
        );
        for (bad, key) in [
            ("replica-9 = \"127.0.0.1:9401\"", "listen.replica-9"),
            ("replica-1 = \"nowhere\"", "listen.replica-1"),
            ("replica-1 = \"127.0.0.1:9400\"", "listen.replica-1"),
        ] {
            let error =
                ClusterConfig::parse(&format!("{text}{bad}\n"), Path::new("c.toml")).unwrap_err();
            assert!(error.to_string().contains(key), "{error}");
        }
    }

    #[test]
    fn vote_keys_name_every_participant_with_a_valid_distinct_key() {
        // Proves that `[vote_keys]` round-trips and that a missing participant, a
        // replica, a malformed key or a shared key is an error naming the entry.
        let mut config = sample();
        assert!(
            config.vote_keys().is_none(),
            "no table: the cluster does not sign"
        );
        for (index, name) in (0..4).map(participant_name).enumerate() {
            let key = ed25519_dalek::SigningKey::from_bytes(&[index as u8 + 1; 32]);
            let text = crate::sign::public_key_hex(&key.verifying_key());
            config.vote_keys.insert(name, text);
        }
        let parsed = ClusterConfig::parse(&config.render(), Path::new("c.toml")).unwrap();
        assert_eq!(parsed, config);
        let keys = parsed.vote_keys().unwrap();
        assert_eq!(keys.keys.iter().filter(|key| key.is_some()).count(), 4);
        assert!(keys.keys[0].is_none(), "replicas do not vote");
        let refused = |edit: &dyn Fn(&mut ClusterConfig), needle: &str| {
            let mut bad = config.clone();
            edit(&mut bad);
            let error = ClusterConfig::parse(&bad.render(), Path::new("c.toml")).unwrap_err();
            assert!(error.to_string().contains(needle), "{error}");
        };
        refused(
            &|c| {
                c.vote_keys.remove("participant-2");
            },
            "vote_keys.participant-2",
        );
        refused(
            &|c| {
                c.vote_keys.insert("replica-0".into(), "00".into());
            },
            "vote_keys.replica-0",
        );
        refused(
            &|c| {
                c.vote_keys.insert("participant-1".into(), "xyz".into());
            },
            "vote_keys.participant-1",
        );
        refused(
            &|c| {
                let shared = c.vote_keys["participant-0"].clone();
                c.vote_keys.insert("participant-3".into(), shared);
            },
            "also the key of",
        );
    }

    #[test]
    fn an_unknown_site_name_lists_the_known_ones() {
        // Proves that asking for a site the cluster does not have is a clear error.
        let error = sample().site("replica-7").unwrap_err();
        assert!(
            error.to_string().contains("replica-0..replica-2"),
            "{error}"
        );
    }
}
