//! The map from a prepared transaction to the amount it holds: a
//! [`crate::proto::table::Table`] of 24-byte slots whose capacity is fixed when the
//! ledger is built (the reservation bound), so it never rehashes or allocates on the
//! hot path; `prepare` needs one probe that answers both "is this id already held?" and
//! "where would it go?".

pub(crate) use crate::proto::table::{Home, Probe};
use crate::proto::table::{Table, TableSlot};

/// What a held reservation does when it is posted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum HoldKind {
    /// Held against the available balance; posting subtracts it.
    Debit = 1,
    /// Held as pending; posting adds it.
    Credit = 2,
}

/// One held reservation, as the ledger reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reservation {
    pub txn: u64,
    pub account: u64,
    pub amount: u64,
    pub kind: HoldKind,
}

/// One slot of the table. `state` 0 marks an empty slot, otherwise it is a `HoldKind`.
/// The account is a `u32` so that the slot packs into 24 bytes (see `ACCOUNTS_MAX`).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Slot {
    txn: u64,
    amount: u64,
    account: u32,
    state: u8,
}

const _: () = assert!(std::mem::size_of::<Slot>() == 24);
const SLOT_EMPTY: u8 = 0;

impl Slot {
    pub(crate) fn new(txn: u64, account: u32, amount: u64, kind: HoldKind) -> Slot {
        Slot {
            txn,
            amount,
            account,
            state: kind as u8,
        }
    }

    pub(crate) fn account(&self) -> usize {
        self.account as usize
    }

    pub(crate) fn amount(&self) -> u64 {
        self.amount
    }

    pub(crate) fn kind(&self) -> HoldKind {
        if self.state == HoldKind::Debit as u8 {
            HoldKind::Debit
        } else {
            debug_assert_eq!(self.state, HoldKind::Credit as u8);
            HoldKind::Credit
        }
    }

    pub(crate) fn reservation(&self) -> Reservation {
        Reservation {
            txn: self.txn,
            account: u64::from(self.account),
            amount: self.amount,
            kind: self.kind(),
        }
    }
}

// SAFETY: `Slot` is plain integers (`u64`, `u64`, `u32`, `u8` and padding), for which
// all-zero bytes are a valid value, and all-zero has `state == SLOT_EMPTY`.
unsafe impl TableSlot for Slot {
    #[inline]
    fn key(&self) -> u64 {
        self.txn
    }
    #[inline]
    fn is_empty(&self) -> bool {
        self.state == SLOT_EMPTY
    }
}

/// The ledger's reservations (see the module docs).
pub(crate) type ReservationTable = Table<Slot>;
