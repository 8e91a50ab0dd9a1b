//! Where payments are committed: the engine in this process, or a running cluster
//! through the network client (`--cluster DIR`). Nothing else in the switch names the
//! engine.

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use tricommit_engine::client::RemoteClient;
use tricommit_engine::ledger::LedgerConfig;
use tricommit_engine::{Engine, EngineConfig, EngineError, ParticipantSpec, Ticket, Txn};
use tricommit_wal::WalConfig;

/// Log segment size of every site: small enough that a fresh directory is ready in
/// milliseconds, large enough that segments rarely roll.
pub const SEGMENT_BYTES: u64 = 16 << 20;
/// How long a submit retries while the engine sheds load before the switch answers 91.
pub const SUBMIT_BUSY_WAIT: Duration = Duration::from_millis(200);
/// The pause between two submit attempts while the engine is busy.
const SUBMIT_RETRY_PAUSE: Duration = Duration::from_micros(200);

/// The ledgers' sizes and opening balances.
#[derive(Debug, Clone, Copy)]
pub struct LedgerSizes {
    pub accounts: u64,
    pub initial_balance: i64,
}

/// The engine handle behind the switch.
pub enum Backend {
    /// An engine embedded in this process, with its logs under a data directory.
    InProcess(Box<Engine>),
    /// A running cluster (`tricommit cluster up`), through its network client.
    Remote(RemoteClient),
}

impl Backend {
    /// Opens (or recovers) the embedded engine: ledger 0 the issuer (cardholders start
    /// at `initial_balance`), ledger 1 the acquirer and ledger 2 the fees (both at 0).
    pub fn open_in_process(data_dir: &Path, sizes: LedgerSizes) -> Result<Backend, EngineError> {
        let mut issuer = LedgerConfig::new(sizes.accounts);
        issuer.balance_initial = sizes.initial_balance;
        let mut config = EngineConfig::ledgers(data_dir, 0, 0, 0);
        config.participants = vec![
            ParticipantSpec::Ledger(issuer),
            ParticipantSpec::Ledger(LedgerConfig::new(sizes.accounts)),
            ParticipantSpec::Ledger(LedgerConfig::new(sizes.accounts)),
        ];
        config.wal = WalConfig {
            segment_bytes: SEGMENT_BYTES,
            ..WalConfig::default()
        };
        Engine::open(config).map(|engine| Backend::InProcess(Box::new(engine)))
    }

    /// Submits `txn`, retrying for up to [`SUBMIT_BUSY_WAIT`] while the engine is busy.
    /// `None` means it was never submitted.
    pub fn submit(&self, txn: Txn) -> Option<Ticket> {
        let deadline = Instant::now() + SUBMIT_BUSY_WAIT;
        let mut txn = txn;
        loop {
            let attempt = match self {
                Backend::InProcess(engine) => engine.submit(txn).map_err(|busy| busy.into_inner()),
                Backend::Remote(client) => client.submit(txn).map_err(|busy| busy.into_inner()),
            };
            match attempt {
                Ok(ticket) => return Some(ticket),
                Err(_) if Instant::now() >= deadline => return None,
                Err(returned) => {
                    txn = returned;
                    thread::sleep(SUBMIT_RETRY_PAUSE);
                }
            }
        }
    }

    /// Finishes what is in flight and closes the logs.
    pub fn shutdown(self) -> Result<(), EngineError> {
        match self {
            Backend::InProcess(engine) => (*engine).shutdown().map(drop),
            // The cluster keeps running: the client only waits for its answers.
            Backend::Remote(client) => {
                client.close();
                Ok(())
            }
        }
    }
}
