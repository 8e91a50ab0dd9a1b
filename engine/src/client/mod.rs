//! Clients of a tricommit cluster, and the one submission surface that the embedded
//! engine and the network client share.
//!
//! Code written against [`Submit`] switches between an in-process [`Engine`] and a
//! [`RemoteClient`] with one line: the constructor.

pub mod balances;
pub mod config;
pub mod remote;

pub use balances::{BalanceError, BalanceReader, LedgerBalances};
pub use config::{ClusterConfig, ConfigError, InitOptions, SiteEntry};
pub use remote::{ClientError, RemoteClient};

use crate::pipeline::{Busy, Ticket};
use crate::runtime::{Engine, Txn};

/// Submits transactions and hands back tickets: implemented by the embedded [`Engine`]
/// and by the network [`RemoteClient`].
pub trait Submit {
    /// Submits `txn`. Returns its ticket (wait on it, or `.await` it), or hands the
    /// transaction back in [`Busy`] when the engine sheds load.
    fn submit(&self, txn: Txn) -> Result<Ticket, Busy<Txn>>;

    /// Submits `txns` in order and appends one ticket per transaction submitted to
    /// `tickets`. On `Busy`, its value is how many were submitted; the rest were not.
    /// The embedded engine takes the group in one step ([`Engine::submit_many`]); this
    /// default submits one at a time and stops at the first `Busy`.
    fn submit_many(&self, txns: &[Txn], tickets: &mut Vec<Ticket>) -> Result<(), Busy<usize>> {
        for (submitted, &txn) in txns.iter().enumerate() {
            match self.submit(txn) {
                Ok(ticket) => tickets.push(ticket),
                Err(busy) => return Err(Busy::new(submitted, busy.reason())),
            }
        }
        Ok(())
    }
}

impl Submit for Engine {
    fn submit(&self, txn: Txn) -> Result<Ticket, Busy<Txn>> {
        Engine::submit(self, txn)
    }

    fn submit_many(&self, txns: &[Txn], tickets: &mut Vec<Ticket>) -> Result<(), Busy<usize>> {
        Engine::submit_many(self, txns, tickets)
    }
}
