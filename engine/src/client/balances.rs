//! Reading a running cluster's balances: [`BalanceReader`].
//!
//! Each participant node answers from the ledger its site thread holds (see
//! `runtime::node::ledger_query`), a page of accounts per round trip. A read is one
//! consistent view of one ledger: every page of it carries the same log position
//! (`last_lsn`), or the read starts over. A *settled* read also waits until the ledger
//! holds no reservation (every transaction it voted on is decided) and everything it
//! shows is synced, so the balances are final and durable; that is the read a bank
//! check needs, once no client is submitting any more.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::transport::balances::{
    BalancesPage, BalancesQuery, BalancesStatus, BALANCES_PAGE_ACCOUNTS_MAX,
};
use crate::transport::{ClientConnection, ClientReply, TransportError};

use super::config::{load_key, participant_name, ClusterConfig, ConfigError};

/// How long one page may take to be answered.
pub const PAGE_WAIT_MS_MAX: u64 = 5_000;
/// Pause between two reads of a ledger that is not settled yet, or between a `Busy`
/// answer and the next query.
pub const RETRY_PAUSE_MS: u64 = 20;
/// Reads of one ledger at most per call, whatever the deadline (every loop is bounded).
pub const READS_MAX: u32 = 10_000;

/// Why balances could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BalanceError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("ledger {ledger}: the cluster has {participants} participants")]
    NoSuchLedger { ledger: u64, participants: u64 },
    #[error("connecting to {site} at {addr}: {source}")]
    Connect {
        site: String,
        addr: std::net::SocketAddr,
        source: TransportError,
    },
    #[error("{site}: {source}")]
    Transport {
        site: String,
        source: TransportError,
    },
    #[error("{site} did not answer a balance query within {PAGE_WAIT_MS_MAX} ms")]
    NoAnswer { site: String },
    #[error("{site} answered a balance query with an unexpected reply")]
    UnexpectedReply { site: String },
    #[error("{site} does not hold the built-in ledger")]
    NotALedger { site: String },
    #[error("{site} changed its account count during a read ({before} then {after})")]
    AccountsChanged {
        site: String,
        before: u64,
        after: u64,
    },
    #[error(
        "{site} did not settle within {waited_ms} ms: {reservations} transactions still \
         reserved, {unsynced} records not yet synced"
    )]
    Unsettled {
        site: String,
        waited_ms: u64,
        reservations: u64,
        unsynced: u64,
    },
}

/// One consistent read of one ledger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerBalances {
    /// The ledger (participant) index.
    pub ledger: u64,
    /// Balance of account `i` at index `i`.
    pub balances: Vec<i64>,
    /// Transactions the ledger held reserved (undecided) when it was read.
    pub reservations: u64,
    /// The log position every page was read at, and what was synced of it.
    pub last_lsn: u64,
    pub durable_lsn: u64,
}

impl LedgerBalances {
    /// Whether nothing was undecided and everything shown was durable.
    pub fn settled(&self) -> bool {
        self.reservations == 0 && self.durable_lsn >= self.last_lsn
    }
}

/// Reads the balances of a running cluster's participants over the network.
pub struct BalanceReader {
    cluster: ClusterConfig,
    secret: [u8; 32],
}

impl BalanceReader {
    /// A reader of the cluster in `dir` (`cluster.toml`, `cluster.key`).
    pub fn open(dir: &Path) -> Result<BalanceReader, BalanceError> {
        let cluster = ClusterConfig::load(dir)?;
        let secret = load_key(dir)?;
        Ok(BalanceReader::new(cluster, secret))
    }

    /// A reader of `cluster` with its secret.
    pub fn new(cluster: ClusterConfig, secret: [u8; 32]) -> BalanceReader {
        BalanceReader { cluster, secret }
    }

    /// The number of ledgers (participants).
    pub fn ledgers(&self) -> u64 {
        self.cluster.participants
    }

    /// One consistent read of `ledger`, settled or not.
    pub fn read(&self, ledger: u64) -> Result<LedgerBalances, BalanceError> {
        let (site, mut connection) = self.connect(ledger)?;
        for _ in 0..READS_MAX {
            if let Some(read) = read_pages(&site, &mut connection, ledger)? {
                return Ok(read);
            }
        }
        Err(BalanceError::NoAnswer { site })
    }

    /// Reads `ledger` until a read is settled (no reservation, everything synced), for
    /// at most `wait`. Returns the balances, indexed by account.
    pub fn read_settled(&self, ledger: u64, wait: Duration) -> Result<Vec<i64>, BalanceError> {
        let started = Instant::now();
        let (site, mut connection) = self.connect(ledger)?;
        let mut last = None;
        for _ in 0..READS_MAX {
            if let Some(read) = read_pages(&site, &mut connection, ledger)? {
                if read.settled() {
                    return Ok(read.balances);
                }
                last = Some(read);
            }
            if started.elapsed() >= wait {
                break;
            }
            std::thread::sleep(Duration::from_millis(RETRY_PAUSE_MS));
        }
        let (reservations, unsynced) = last.map_or((0, 0), |read| {
            (
                read.reservations,
                read.last_lsn.saturating_sub(read.durable_lsn),
            )
        });
        Err(BalanceError::Unsettled {
            site,
            waited_ms: started.elapsed().as_millis() as u64,
            reservations,
            unsynced,
        })
    }

    /// [`read_settled`](Self::read_settled) for every ledger, within `wait` in all.
    pub fn read_all_settled(&self, wait: Duration) -> Result<Vec<Vec<i64>>, BalanceError> {
        let deadline = Instant::now() + wait;
        (0..self.ledgers())
            .map(|ledger| {
                let left = deadline.saturating_duration_since(Instant::now());
                self.read_settled(ledger, left)
            })
            .collect()
    }

    fn connect(&self, ledger: u64) -> Result<(String, ClientConnection), BalanceError> {
        if ledger >= self.cluster.participants {
            return Err(BalanceError::NoSuchLedger {
                ledger,
                participants: self.cluster.participants,
            });
        }
        let site = self.cluster.site(&participant_name(ledger as usize))?;
        let connection =
            ClientConnection::connect(site.addr, self.cluster.cluster_id, &self.secret).map_err(
                |source| BalanceError::Connect {
                    site: site.name.clone(),
                    addr: site.addr,
                    source,
                },
            )?;
        Ok((site.name, connection))
    }
}

/// Reads every page of the ledger once. `None` when the ledger moved between two pages
/// (the caller reads again); a read is consistent when all its pages carry one
/// `last_lsn`.
fn read_pages(
    site: &str,
    connection: &mut ClientConnection,
    ledger: u64,
) -> Result<Option<LedgerBalances>, BalanceError> {
    let first = query_page(site, connection, 0)?;
    let accounts_total = first.accounts_total;
    let mut read = LedgerBalances {
        ledger,
        balances: Vec::with_capacity(accounts_total as usize),
        reservations: first.reservations,
        last_lsn: first.last_lsn,
        durable_lsn: first.durable_lsn,
    };
    read.balances.extend_from_slice(&first.balances);
    while (read.balances.len() as u64) < accounts_total {
        let page = query_page(site, connection, read.balances.len() as u64)?;
        if page.accounts_total != accounts_total {
            return Err(BalanceError::AccountsChanged {
                site: site.to_owned(),
                before: accounts_total,
                after: page.accounts_total,
            });
        }
        if page.last_lsn != read.last_lsn || page.balances.is_empty() {
            return Ok(None);
        }
        read.reservations = read.reservations.max(page.reservations);
        read.durable_lsn = read.durable_lsn.min(page.durable_lsn);
        read.balances.extend_from_slice(&page.balances);
    }
    Ok(Some(read))
}

/// Asks for the page at `first_account` and waits for it; a `Busy` answer (the node's
/// query queue was full) is asked again after a pause, within the page's time bound.
fn query_page(
    site: &str,
    connection: &mut ClientConnection,
    first_account: u64,
) -> Result<BalancesPage, BalanceError> {
    let transport = |source| BalanceError::Transport {
        site: site.to_owned(),
        source,
    };
    let deadline = Instant::now() + Duration::from_millis(PAGE_WAIT_MS_MAX);
    let query = BalancesQuery {
        first_account,
        accounts_max: BALANCES_PAGE_ACCOUNTS_MAX as u32,
    };
    connection.send_balances_query(&query).map_err(transport)?;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(BalanceError::NoAnswer {
                site: site.to_owned(),
            });
        }
        match connection.recv_timeout(left).map_err(transport)? {
            None => {}
            Some(ClientReply::Balances(page)) => {
                if page.status == BalancesStatus::NotALedger {
                    return Err(BalanceError::NotALedger {
                        site: site.to_owned(),
                    });
                }
                if page.first_account != first_account {
                    return Err(BalanceError::UnexpectedReply {
                        site: site.to_owned(),
                    });
                }
                return Ok(page);
            }
            Some(ClientReply::Busy(busy)) if busy.ids.is_empty() => {
                std::thread::sleep(Duration::from_millis(RETRY_PAUSE_MS));
                connection.send_balances_query(&query).map_err(transport)?;
            }
            Some(_) => {
                return Err(BalanceError::UnexpectedReply {
                    site: site.to_owned(),
                })
            }
        }
    }
}
