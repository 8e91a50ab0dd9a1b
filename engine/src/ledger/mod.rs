//! The built-in ledger participant: accounts with `i64` balances, reserved on prepare,
//! posted on commit and voided on abort, like TigerBeetle's pending transfers.
//!
//! # Model
//! Accounts are dense ids `0..accounts`, kept in one flat vector of 32-byte records so
//! that an operation touches one cache line of account state. Each account has a
//! `balance`, a lower `limit` (0 by default), and two sums of held reservations:
//!
//! - a **debit** is prepared only if `balance - debits_pending - amount >= limit`, so the
//!   reservations already held (including earlier operations of the same batch) count
//!   against the funds; it then holds `amount` in `debits_pending`;
//! - a **credit** is prepared only if `balance + credits_pending + amount <= i64::MAX`,
//!   and is held in `credits_pending`: it is not spendable until it is posted.
//!
//! These two checks are what make a `Yes` vote keep its promise: whatever else is
//! prepared, posted or voided later, posting a held debit cannot take the balance below
//! the limit and posting a held credit cannot overflow. The checks are computed in
//! `i128`, so no intermediate value wraps.
//!
//! # Votes
//! `prepare` checks, in this order, and the first failure decides the vote:
//! 1. the payload decodes ([`LedgerOp::decode`]), else `No(MALFORMED)`;
//! 2. the transaction does not already hold a reservation here, else `No(DUPLICATE)`;
//! 3. the account exists, else `No(UNKNOWN_ACCOUNT)`;
//! 4. a `Check` op votes `ReadOnly` if `amount` is available now and
//!    `No(INSUFFICIENT_FUNDS)` otherwise; a debit or credit of 0 votes `ReadOnly`:
//!    neither holds anything, so the participant can leave after phase 1;
//! 5. the reservation table has room, else `No(`[`REASON_RESERVATIONS_FULL`]`)`;
//! 6. the funds check above, else `No(INSUFFICIENT_FUNDS)` or `No(OVERFLOW)`.
//!
//! Duplicates are detected while the first reservation is held. Once a transaction is
//! committed or aborted the ledger forgets its id (remembering every id ever seen would
//! grow without bound); the engine's idempotent transaction ids keep a decided
//! transaction from being prepared again.
//!
//! # Postings
//! Each `commit` call records one [`Posting`] per reservation it posts, in order. They
//! are readable with [`Ledger::last_postings`] until the next `commit` call, and are
//! handed to the optional [`PostingSink`] at the end of the call, so the engine can log
//! them or an audit dump can print them. The ledger itself keeps no history: the buffer
//! holds exactly one call's postings and is reused.
//!
//! # Snapshots
//! [`Ledger::snapshot_encode`] writes balances, limits and held reservations in a
//! checksummed format (see the `snapshot` module), so that recovery can start from a
//! snapshot instead of replaying the whole log; `ResourceManager::snapshot` and
//! `restore` use it, which is what lets a ledger participant's log be checkpointed.

mod error;
mod op;
mod snapshot;
mod table;

pub use error::LedgerError;
pub use op::{LedgerOp, OpKind, OP_AMOUNT_MAX};
pub use table::{HoldKind, Reservation};

use crate::proto::table::prefetch_read;
use crate::proto::{Op, Reason, ResourceManager, RestoreError, TxnId, Vote};
use table::{Home, Probe, ReservationTable, Slot};

/// The vote reason for a prepare refused because the ledger already holds
/// `reservations_max` reservations. Ledger-specific reasons use codes 64..128 of the
/// range reserved for tricommit, so they cannot collide with the protocol's own.
pub const REASON_RESERVATIONS_FULL: Reason = Reason(64);

/// The most accounts one ledger holds (4 GiB of account records). Reservation slots
/// store the account as a `u32`, which this bound makes lossless.
pub const ACCOUNTS_MAX: u64 = 1 << 27;
const _: () = assert!(ACCOUNTS_MAX <= u32::MAX as u64 + 1);

/// The largest configurable reservation bound (its table takes 768 MiB).
pub const RESERVATIONS_MAX_LIMIT: u64 = 1 << 24;

/// The default reservation bound: enough for 16 in-flight batches of 8192 operations.
pub const RESERVATIONS_MAX_DEFAULT: u64 = 1 << 17;
const _: () = assert!(RESERVATIONS_MAX_DEFAULT <= RESERVATIONS_MAX_LIMIT);

/// How many operations ahead `prepare`, `commit` and `abort` prefetch account records
/// and table slots, so that the cache misses of a batch over many accounts overlap
/// instead of queueing. A power of two, so the ring of computed homes wraps cheaply.
const PREFETCH_OPS_AHEAD: usize = 8;
const _: () = assert!(PREFETCH_OPS_AHEAD.is_power_of_two());

/// How a ledger is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LedgerConfig {
    /// The number of accounts; ids are `0..accounts`. At most [`ACCOUNTS_MAX`].
    pub accounts: u64,
    /// The balance every account starts with.
    pub balance_initial: i64,
    /// The most reservations held at once, in `1..=RESERVATIONS_MAX_LIMIT`. A prepare
    /// beyond it votes `No(REASON_RESERVATIONS_FULL)`.
    pub reservations_max: u64,
}

impl LedgerConfig {
    /// `accounts` accounts at balance 0 with the default reservation bound.
    pub fn new(accounts: u64) -> LedgerConfig {
        LedgerConfig {
            accounts,
            balance_initial: 0,
            reservations_max: RESERVATIONS_MAX_DEFAULT,
        }
    }
}

/// One account's state. 32 bytes and aligned to 32, so it never straddles a cache line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C, align(32))]
pub struct Account {
    /// The posted balance.
    pub balance: i64,
    /// The lowest balance a debit may leave.
    pub limit: i64,
    /// The sum of held debits.
    pub debits_pending: u64,
    /// The sum of held credits.
    pub credits_pending: u64,
}

impl Account {
    fn new(balance: i64, limit: i64) -> Account {
        Account {
            balance,
            limit,
            debits_pending: 0,
            credits_pending: 0,
        }
    }

    /// What a new debit may still take: `balance - debits_pending - limit`, which the
    /// invariant keeps at or above 0.
    pub fn available(&self) -> i128 {
        i128::from(self.balance) - i128::from(self.debits_pending) - i128::from(self.limit)
    }

    /// True if `amount` more could be debited without going below the limit.
    fn can_debit(&self, amount: u64) -> bool {
        self.available() >= i128::from(amount)
    }

    /// True if `amount` more could be credited without the posted balance overflowing.
    fn can_credit(&self, amount: u64) -> bool {
        i128::from(self.balance) + i128::from(self.credits_pending) + i128::from(amount)
            <= i128::from(i64::MAX)
    }

    /// True if every held reservation can still be posted.
    fn is_consistent(&self) -> bool {
        self.available() >= 0 && self.can_credit(0)
    }
}

/// One posted change: `delta` was added to `account`'s balance by transaction `txn`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Posting {
    pub txn: TxnId,
    pub account: u64,
    pub delta: i64,
}

/// The size of an encoded [`Posting`].
pub const POSTING_BYTES: usize = 24;

impl Posting {
    /// `txn u64 | account u64 | delta i64`, little-endian: for logs and audit dumps.
    pub fn encode(&self) -> [u8; POSTING_BYTES] {
        let mut bytes = [0u8; POSTING_BYTES];
        bytes[0..8].copy_from_slice(&self.txn.0.to_le_bytes());
        bytes[8..16].copy_from_slice(&self.account.to_le_bytes());
        bytes[16..24].copy_from_slice(&self.delta.to_le_bytes());
        bytes
    }

    /// The inverse of [`Posting::encode`]; every byte pattern is some posting.
    pub fn decode(bytes: &[u8; POSTING_BYTES]) -> Posting {
        let word = |offset: usize| {
            let mut word = [0u8; 8];
            word.copy_from_slice(&bytes[offset..offset + 8]);
            word
        };
        Posting {
            txn: TxnId(u64::from_le_bytes(word(0))),
            account: u64::from_le_bytes(word(8)),
            delta: i64::from_le_bytes(word(16)),
        }
    }
}

/// Receives the postings of each `commit` call, in order, once per call that posts.
pub type PostingSink = Box<dyn FnMut(&[Posting]) + Send>;

/// A ledger participant's state: accounts and held reservations.
pub struct Ledger {
    accounts: Vec<Account>,
    reservations: ReservationTable,
    /// The postings of the latest `commit` call; cleared at the start of each call.
    postings: Vec<Posting>,
    posting_sink: Option<PostingSink>,
}

/// A ledger moves to the thread of the pipeline stage that drives it.
const _: fn() = || {
    fn assert_send<T: Send>() {}
    assert_send::<Ledger>();
};

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("accounts", &self.accounts.len())
            .field("reservations", &self.reservations.len())
            .field("reservations_max", &self.reservations.len_max())
            .field("total_balance", &self.total_balance())
            .finish()
    }
}

/// Two ledgers are equal when their accounts and held reservations are; the layout of
/// the reservation table and the posting buffer do not matter.
impl PartialEq for Ledger {
    fn eq(&self, other: &Ledger) -> bool {
        self.accounts == other.accounts
            && self.reservations.len_max() == other.reservations.len_max()
            && self.reservations_sorted() == other.reservations_sorted()
    }
}

impl Eq for Ledger {}

impl Ledger {
    /// Builds a ledger of `config.accounts` accounts, each at `config.balance_initial`
    /// with limit 0 (a negative initial balance is allowed only through `set_limit`).
    pub fn new(config: LedgerConfig) -> Result<Ledger, LedgerError> {
        check_config(config.accounts, config.reservations_max)?;
        if config.balance_initial < 0 && config.accounts > 0 {
            return Err(LedgerError::BalanceBelowLimit {
                account: 0,
                balance: config.balance_initial,
                limit: 0,
            });
        }
        let accounts = vec![Account::new(config.balance_initial, 0); config.accounts as usize];
        Ok(Ledger::from_parts(
            accounts,
            config.reservations_max as usize,
        ))
    }

    fn from_parts(accounts: Vec<Account>, reservations_max: usize) -> Ledger {
        Ledger {
            accounts,
            reservations: ReservationTable::new(reservations_max),
            postings: Vec::new(),
            posting_sink: None,
        }
    }

    /// The number of accounts.
    pub fn accounts_len(&self) -> u64 {
        self.accounts.len() as u64
    }

    /// One account's state, or `None` if `id` is out of range.
    pub fn account(&self, id: u64) -> Option<Account> {
        self.accounts.get(usize::try_from(id).ok()?).copied()
    }

    /// Every posted balance, by account id.
    pub fn balances(&self) -> impl ExactSizeIterator<Item = i64> + '_ {
        self.accounts.iter().map(|account| account.balance)
    }

    /// The sum of the posted balances; `i128` so that it cannot overflow.
    pub fn total_balance(&self) -> i128 {
        self.accounts.iter().map(|a| i128::from(a.balance)).sum()
    }

    /// The ids of accounts whose posted balance is below their limit (never any, unless
    /// there is a bug): for the bank invariant.
    pub fn accounts_below_limit(&self) -> impl Iterator<Item = u64> + '_ {
        self.accounts
            .iter()
            .enumerate()
            .filter(|(_, account)| account.balance < account.limit)
            .map(|(id, _)| id as u64)
    }

    /// Checks every invariant the ledger keeps, from scratch: each account's pending
    /// sums equal the sums of its held reservations, no balance is below its limit, and
    /// every held reservation can still be posted. For tests and after recovery; it
    /// walks every account and every reservation, so it is not for the hot path.
    pub fn check_invariants(&self) -> Result<(), LedgerError> {
        let mut pending = vec![(0u128, 0u128); self.accounts.len()];
        for reservation in self.reservations.iter().map(Slot::reservation) {
            let sums = &mut pending[reservation.account as usize];
            match reservation.kind {
                HoldKind::Debit => sums.0 += u128::from(reservation.amount),
                HoldKind::Credit => sums.1 += u128::from(reservation.amount),
            }
        }
        for (id, (account, sums)) in self.accounts.iter().zip(pending).enumerate() {
            let sums_match = u128::from(account.debits_pending) == sums.0
                && u128::from(account.credits_pending) == sums.1;
            if !sums_match || !account.is_consistent() {
                return Err(LedgerError::InvariantBroken {
                    account: id as u64,
                    state: *account,
                });
            }
        }
        Ok(())
    }

    /// The number of reservations held now.
    pub fn reservations_len(&self) -> u64 {
        self.reservations.len() as u64
    }

    /// The most reservations this ledger holds at once.
    pub fn reservations_max(&self) -> u64 {
        self.reservations.len_max() as u64
    }

    /// Every held reservation, sorted by transaction id.
    pub fn reservations_sorted(&self) -> Vec<Reservation> {
        let mut held: Vec<Reservation> = self.reservations.iter().map(Slot::reservation).collect();
        held.sort_unstable();
        held
    }

    /// The postings of the most recent `commit` call, in the order they were posted.
    pub fn last_postings(&self) -> &[Posting] {
        &self.postings
    }

    /// Sets (or removes) the sink that receives each `commit` call's postings.
    pub fn set_posting_sink(&mut self, sink: Option<PostingSink>) {
        self.posting_sink = sink;
    }

    /// Setup: sets an account's limit. Refused if the account holds reservations or its
    /// balance would be below the new limit.
    pub fn set_limit(&mut self, id: u64, limit: i64) -> Result<(), LedgerError> {
        let account = self.account_for_setup(id)?;
        if account.balance < limit {
            return Err(LedgerError::BalanceBelowLimit {
                account: id,
                balance: account.balance,
                limit,
            });
        }
        account.limit = limit;
        Ok(())
    }

    /// Setup: sets an account's balance, for opening balances. Refused if the account
    /// holds reservations or the balance would be below its limit. This changes the sum
    /// of balances, so the bank invariant is measured from after setup.
    pub fn set_balance(&mut self, id: u64, balance: i64) -> Result<(), LedgerError> {
        let account = self.account_for_setup(id)?;
        if balance < account.limit {
            return Err(LedgerError::BalanceBelowLimit {
                account: id,
                balance,
                limit: account.limit,
            });
        }
        account.balance = balance;
        Ok(())
    }

    fn account_for_setup(&mut self, id: u64) -> Result<&mut Account, LedgerError> {
        let account = usize::try_from(id)
            .ok()
            .and_then(|index| self.accounts.get_mut(index))
            .ok_or(LedgerError::AccountUnknown(id))?;
        if account.debits_pending != 0 || account.credits_pending != 0 {
            return Err(LedgerError::AccountReserved(id));
        }
        Ok(account)
    }

    /// Validates and, if it votes `Yes`, reserves one operation (see the module docs
    /// for the order of the checks).
    #[inline]
    fn prepare_one(&mut self, op: &Op, home: Home) -> Vote {
        let Ok(ledger_op) = LedgerOp::decode(&op.payload) else {
            return Vote::No(Reason::MALFORMED);
        };
        let index = match self.reservations.probe_from(op.txn.0, home) {
            Probe::Found(_) => return Vote::No(Reason::DUPLICATE),
            Probe::Vacant(index) => index,
        };
        let Some(account) = usize::try_from(ledger_op.account)
            .ok()
            .and_then(|id| self.accounts.get_mut(id))
        else {
            return Vote::No(Reason::UNKNOWN_ACCOUNT);
        };
        let kind = match ledger_op.kind {
            OpKind::Check if account.can_debit(ledger_op.amount) => return Vote::ReadOnly,
            OpKind::Check => return Vote::No(Reason::INSUFFICIENT_FUNDS),
            _ if ledger_op.amount == 0 => return Vote::ReadOnly,
            OpKind::Debit => HoldKind::Debit,
            OpKind::Credit => HoldKind::Credit,
        };
        if self.reservations.is_full() {
            return Vote::No(REASON_RESERVATIONS_FULL);
        }
        let amount = ledger_op.amount;
        match kind {
            HoldKind::Debit if !account.can_debit(amount) => {
                return Vote::No(Reason::INSUFFICIENT_FUNDS)
            }
            // Cannot overflow: `can_debit` bounds the sum by `balance - limit < 2^64`.
            HoldKind::Debit => account.debits_pending += amount,
            HoldKind::Credit if !account.can_credit(amount) => return Vote::No(Reason::OVERFLOW),
            // Cannot overflow: `can_credit` bounds the sum by `i64::MAX - balance < 2^64`.
            HoldKind::Credit => account.credits_pending += amount,
        }
        // The account id is below `ACCOUNTS_MAX <= 2^32`, so it fits the slot's `u32`.
        let slot = Slot::new(op.txn.0, ledger_op.account as u32, amount, kind);
        self.reservations.insert_at(index, slot);
        Vote::Yes
    }

    /// Hints the CPU to fetch the account record and the table slot `op` will touch,
    /// and returns that slot's home so that it is hashed only once.
    #[inline]
    fn prefetch_op(&self, op: &Op) -> Home {
        let mut account_bytes = [0u8; 8];
        account_bytes.copy_from_slice(&op.payload[0..8]);
        let account = u64::from_le_bytes(account_bytes);
        if let Some(record) = usize::try_from(account)
            .ok()
            .and_then(|id| self.accounts.get(id))
        {
            prefetch_read(record as *const Account as *const i8);
        }
        self.prefetch_txn(op.txn)
    }

    /// Hints the CPU to fetch the table slot where `txn`'s probe starts, and returns it.
    #[inline]
    fn prefetch_txn(&self, txn: TxnId) -> Home {
        self.reservations.prefetch(txn.0)
    }

    /// Removes each held reservation of `txns`, in order, and posts or voids it. The
    /// homes of the next `PREFETCH_OPS_AHEAD` ids are computed and prefetched ahead.
    #[inline]
    fn decide(&mut self, txns: &[TxnId], post: bool) {
        let mut homes = [Home::default(); PREFETCH_OPS_AHEAD];
        for (ring, &txn) in homes.iter_mut().zip(txns) {
            *ring = self.prefetch_txn(txn);
        }
        for (index, &txn) in txns.iter().enumerate() {
            let ring = index % PREFETCH_OPS_AHEAD;
            let home = homes[ring];
            if let Some(&ahead) = txns.get(index + PREFETCH_OPS_AHEAD) {
                homes[ring] = self.prefetch_txn(ahead);
            }
            match self.reservations.remove_from(txn.0, home) {
                Some(slot) if post => self.post(txn, slot),
                Some(slot) => self.void(slot),
                None => {}
            }
        }
    }

    /// Posts one held reservation and records its posting.
    #[inline]
    fn post(&mut self, txn: TxnId, slot: Slot) {
        let account = &mut self.accounts[slot.account()];
        let amount = slot.amount();
        // `amount <= OP_AMOUNT_MAX == i64::MAX`, so the cast is lossless.
        let delta = match slot.kind() {
            HoldKind::Debit => {
                account.debits_pending -= amount;
                -(amount as i64)
            }
            HoldKind::Credit => {
                account.credits_pending -= amount;
                amount as i64
            }
        };
        // Cannot overflow or go below the limit: prepare's checks bound it (module docs).
        account.balance += delta;
        debug_assert!(account.balance >= account.limit);
        self.postings.push(Posting {
            txn,
            account: slot.account() as u64,
            delta,
        });
    }

    /// Releases one held reservation without posting it.
    #[inline]
    fn void(&mut self, slot: Slot) {
        let account = &mut self.accounts[slot.account()];
        match slot.kind() {
            HoldKind::Debit => account.debits_pending -= slot.amount(),
            HoldKind::Credit => account.credits_pending -= slot.amount(),
        }
    }
}

impl ResourceManager for Ledger {
    fn prepare(&mut self, ops: &[Op], votes: &mut Vec<Vote>) {
        votes.reserve(ops.len());
        let mut homes = [Home::default(); PREFETCH_OPS_AHEAD];
        for (ring, op) in homes.iter_mut().zip(ops) {
            *ring = self.prefetch_op(op);
        }
        for (index, op) in ops.iter().enumerate() {
            let ring = index % PREFETCH_OPS_AHEAD;
            let home = homes[ring];
            if let Some(ahead) = ops.get(index + PREFETCH_OPS_AHEAD) {
                homes[ring] = self.prefetch_op(ahead);
            }
            let vote = self.prepare_one(op, home);
            votes.push(vote);
        }
    }

    fn commit(&mut self, txns: &[TxnId]) {
        self.postings.clear();
        self.decide(txns, true);
        if let Some(sink) = self.posting_sink.as_mut() {
            if !self.postings.is_empty() {
                sink(&self.postings);
            }
        }
    }

    fn abort(&mut self, txns: &[TxnId]) {
        self.decide(txns, false);
    }

    fn snapshot(&self) -> Option<Vec<u8>> {
        let mut bytes = Vec::new();
        self.snapshot_encode(&mut bytes);
        Some(bytes)
    }

    /// Loads a snapshot, keeping this ledger's posting sink (postings made after the
    /// snapshot still reach it).
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), RestoreError> {
        let mut restored = Ledger::snapshot_decode(snapshot)
            .map_err(|error| RestoreError::Invalid(error.to_string()))?;
        restored.posting_sink = self.posting_sink.take();
        *self = restored;
        Ok(())
    }
}

fn check_config(accounts: u64, reservations_max: u64) -> Result<(), LedgerError> {
    if accounts > ACCOUNTS_MAX {
        return Err(LedgerError::AccountsTooMany {
            accounts,
            accounts_max: ACCOUNTS_MAX,
        });
    }
    if reservations_max == 0 || reservations_max > RESERVATIONS_MAX_LIMIT {
        return Err(LedgerError::ReservationsMaxInvalid {
            reservations_max,
            reservations_max_limit: RESERVATIONS_MAX_LIMIT,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
