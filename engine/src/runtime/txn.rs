//! The client's transaction: an id, a priority, and one operation per participant.

use crate::ledger::LedgerOp;
use crate::pipeline::Priority;
use crate::proto::{TxnId, OP_PAYLOAD_BYTES};

/// The most participants one transaction may touch. Fixed so that a `Txn` is plain data
/// that moves through the intake queue without an allocation.
pub const TXN_LEGS_MAX: usize = 4;

/// One transaction's operation at one participant (an index into
/// [`EngineConfig::participants`](super::EngineConfig::participants)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leg {
    pub participant: u8,
    pub payload: [u8; OP_PAYLOAD_BYTES],
}

/// Why a transaction could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TxnError {
    #[error("a transaction touches at most {TXN_LEGS_MAX} participants")]
    TooManyLegs,
    #[error("participant {0} appears twice in one transaction; give it one operation")]
    DuplicateParticipant(u8),
    #[error("a transfer needs two different ledgers (both legs name ledger {0})")]
    SameLedger(u8),
    #[error("amount {0} is above the largest ledger amount (i64::MAX)")]
    Amount(u64),
}

/// A transaction as a client submits it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Txn {
    pub id: TxnId,
    pub priority: Priority,
    legs: [Leg; TXN_LEGS_MAX],
    legs_len: u8,
}

impl Txn {
    /// A transaction with no operation yet.
    pub fn new(id: TxnId, priority: Priority) -> Txn {
        let empty = Leg {
            participant: 0,
            payload: [0; OP_PAYLOAD_BYTES],
        };
        Txn {
            id,
            priority,
            legs: [empty; TXN_LEGS_MAX],
            legs_len: 0,
        }
    }

    /// Adds the operation for one participant.
    pub fn with_leg(
        mut self,
        participant: u8,
        payload: [u8; OP_PAYLOAD_BYTES],
    ) -> Result<Txn, TxnError> {
        if self.legs().iter().any(|leg| leg.participant == participant) {
            return Err(TxnError::DuplicateParticipant(participant));
        }
        let slot = self
            .legs
            .get_mut(self.legs_len as usize)
            .ok_or(TxnError::TooManyLegs)?;
        *slot = Leg {
            participant,
            payload,
        };
        self.legs_len += 1;
        Ok(self)
    }

    /// A transfer of `amount` from an account of one ledger participant to an account of
    /// another: a debit leg and a credit leg.
    pub fn transfer(
        id: TxnId,
        from: (u8, u64),
        to: (u8, u64),
        amount: u64,
    ) -> Result<Txn, TxnError> {
        if from.0 == to.0 {
            return Err(TxnError::SameLedger(from.0));
        }
        let debit = LedgerOp::debit(from.1, amount).map_err(|_| TxnError::Amount(amount))?;
        let credit = LedgerOp::credit(to.1, amount).map_err(|_| TxnError::Amount(amount))?;
        Txn::new(id, Priority::Normal)
            .with_leg(from.0, debit.encode())?
            .with_leg(to.0, credit.encode())
    }

    /// The same transaction with another priority.
    pub fn with_priority(mut self, priority: Priority) -> Txn {
        self.priority = priority;
        self
    }

    /// The operations, one per participant.
    pub fn legs(&self) -> &[Leg] {
        &self.legs[..self.legs_len as usize]
    }
}
