//! A tiny bank: the simulator's resource manager, simple enough to check invariant 8
//! by hand. Not the product ledger (that lives in `ledger/`).
//!
//! An operation is `account u32 | delta i64 | force_no u8 | zero padding`. A debit
//! holds its amount until commit or abort; a credit is not spendable before commit.
//! `delta == 0` votes read-only; `force_no == 1` votes no (the workload uses it to
//! exercise no votes deterministically).

use std::collections::{BTreeSet, HashMap};

use crate::proto::{Op, Reason, ResourceManager, RestoreError, TxnId, Vote, OP_PAYLOAD_BYTES};

/// Encodes one bank operation.
pub fn bank_op(txn: TxnId, account: u32, delta: i64, force_no: bool) -> Op {
    let mut payload = [0u8; OP_PAYLOAD_BYTES];
    payload[0..4].copy_from_slice(&account.to_le_bytes());
    payload[4..12].copy_from_slice(&delta.to_le_bytes());
    payload[12] = force_no as u8;
    Op { txn, payload }
}

fn decode(op: &Op) -> Option<(u32, i64, bool)> {
    let account = u32::from_le_bytes(op.payload[0..4].try_into().ok()?);
    let delta = i64::from_le_bytes(op.payload[4..12].try_into().ok()?);
    match op.payload[12] {
        0 => Some((account, delta, false)),
        1 => Some((account, delta, true)),
        _ => None,
    }
}

/// Balances, held debits and the set of applied transactions.
#[derive(Clone, Debug)]
pub struct Bank {
    balances: Vec<i64>,
    held_debits: Vec<i64>,
    holds: HashMap<TxnId, (u32, i64)>,
    applied: BTreeSet<TxnId>,
}

impl Bank {
    /// `accounts` accounts holding `balance` each.
    pub fn new(accounts: u32, balance: i64) -> Bank {
        Bank {
            balances: vec![balance; accounts as usize],
            held_debits: vec![0; accounts as usize],
            holds: HashMap::new(),
            applied: BTreeSet::new(),
        }
    }

    /// Every balance, in account order.
    pub fn balances(&self) -> &[i64] {
        &self.balances
    }

    /// The transactions whose changes this bank applied.
    pub fn applied(&self) -> &BTreeSet<TxnId> {
        &self.applied
    }

    /// True if a reservation is still held for `txn`.
    pub fn holds(&self, txn: TxnId) -> bool {
        self.holds.contains_key(&txn)
    }

    fn vote(&mut self, op: &Op) -> Vote {
        let Some((account, delta, force_no)) = decode(op) else {
            return Vote::No(Reason::MALFORMED);
        };
        if force_no {
            return Vote::No(Reason::INSUFFICIENT_FUNDS);
        }
        if self.holds.contains_key(&op.txn) || self.applied.contains(&op.txn) {
            return Vote::No(Reason::DUPLICATE);
        }
        let Some(balance) = self.balances.get(account as usize).copied() else {
            return Vote::No(Reason::UNKNOWN_ACCOUNT);
        };
        if delta == 0 {
            return Vote::ReadOnly;
        }
        let held = self.held_debits[account as usize];
        if delta < 0 && (balance as i128) - (held as i128) + (delta as i128) < 0 {
            return Vote::No(Reason::INSUFFICIENT_FUNDS);
        }
        if delta > 0 && (balance as i128) + (delta as i128) > i64::MAX as i128 / 2 {
            return Vote::No(Reason::OVERFLOW);
        }
        if delta < 0 {
            self.held_debits[account as usize] += -delta;
        }
        self.holds.insert(op.txn, (account, delta));
        Vote::Yes
    }
}

impl ResourceManager for Bank {
    fn prepare(&mut self, ops: &[Op], votes: &mut Vec<Vote>) {
        for op in ops {
            let vote = self.vote(op);
            votes.push(vote);
        }
    }

    fn commit(&mut self, txns: &[TxnId]) {
        for txn in txns {
            if let Some((account, delta)) = self.holds.remove(txn) {
                let index = account as usize;
                self.balances[index] += delta;
                if delta < 0 {
                    self.held_debits[index] -= -delta;
                }
                self.applied.insert(*txn);
            }
        }
    }

    fn abort(&mut self, txns: &[TxnId]) {
        for txn in txns {
            if let Some((account, delta)) = self.holds.remove(txn) {
                if delta < 0 {
                    self.held_debits[account as usize] -= -delta;
                }
            }
        }
    }

    /// `accounts u32 | accounts × (balance i64, held i64) | holds u32 | holds × (txn
    /// u64, account u32, delta i64)` sorted by txn `| applied u32 | applied × txn u64`.
    fn snapshot(&self) -> Option<Vec<u8>> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&(self.balances.len() as u32).to_le_bytes());
        for (balance, held) in self.balances.iter().zip(&self.held_debits) {
            bytes.extend_from_slice(&balance.to_le_bytes());
            bytes.extend_from_slice(&held.to_le_bytes());
        }
        let mut holds: Vec<_> = self.holds.iter().collect();
        holds.sort_unstable_by_key(|(txn, _)| **txn);
        bytes.extend_from_slice(&(holds.len() as u32).to_le_bytes());
        for (txn, (account, delta)) in holds {
            bytes.extend_from_slice(&txn.0.to_le_bytes());
            bytes.extend_from_slice(&account.to_le_bytes());
            bytes.extend_from_slice(&delta.to_le_bytes());
        }
        bytes.extend_from_slice(&(self.applied.len() as u32).to_le_bytes());
        for txn in &self.applied {
            bytes.extend_from_slice(&txn.0.to_le_bytes());
        }
        Some(bytes)
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), RestoreError> {
        let mut reader = SnapshotReader { bytes: snapshot };
        let mut bank = Bank::new(0, 0);
        for _ in 0..reader.count(16)? {
            bank.balances.push(reader.u64()? as i64);
            bank.held_debits.push(reader.u64()? as i64);
        }
        for _ in 0..reader.count(20)? {
            let txn = TxnId(reader.u64()?);
            let account = reader.u32()?;
            let delta = reader.u64()? as i64;
            bank.holds.insert(txn, (account, delta));
        }
        for _ in 0..reader.count(8)? {
            bank.applied.insert(TxnId(reader.u64()?));
        }
        if !reader.bytes.is_empty() {
            return Err(RestoreError::Invalid("trailing bytes".into()));
        }
        *self = bank;
        Ok(())
    }
}

/// A bounds-checked cursor over a bank snapshot.
struct SnapshotReader<'a> {
    bytes: &'a [u8],
}

impl SnapshotReader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], RestoreError> {
        let Some((head, rest)) = self.bytes.split_first_chunk::<N>() else {
            return Err(RestoreError::Invalid("truncated".into()));
        };
        self.bytes = rest;
        Ok(*head)
    }

    fn u32(&mut self) -> Result<u32, RestoreError> {
        self.take().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, RestoreError> {
        self.take().map(u64::from_le_bytes)
    }

    /// A count of items of `item_bytes` each, checked against the bytes left.
    fn count(&mut self, item_bytes: usize) -> Result<usize, RestoreError> {
        let count = self.u32()? as usize;
        if count.saturating_mul(item_bytes) > self.bytes.len() {
            return Err(RestoreError::Invalid("count beyond the snapshot".into()));
        }
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves that a debit holds funds against a later debit in the same batch, and
    // that commit posts while abort releases.
    #[test]
    fn holds_count_against_later_debits() {
        let mut bank = Bank::new(2, 100);
        let mut votes = Vec::new();
        let ops = [
            bank_op(TxnId(1), 0, -70, false),
            bank_op(TxnId(2), 0, -40, false),
            bank_op(TxnId(3), 1, 0, false),
            bank_op(TxnId(4), 1, 5, true),
        ];
        bank.prepare(&ops, &mut votes);
        assert_eq!(
            votes,
            vec![
                Vote::Yes,
                Vote::No(Reason::INSUFFICIENT_FUNDS),
                Vote::ReadOnly,
                Vote::No(Reason::INSUFFICIENT_FUNDS)
            ]
        );
        bank.abort(&[TxnId(1)]);
        votes.clear();
        bank.prepare(&[bank_op(TxnId(5), 0, -90, false)], &mut votes);
        assert_eq!(votes, vec![Vote::Yes]);
        bank.commit(&[TxnId(5)]);
        assert_eq!(bank.balances(), &[10, 100]);
        assert!(bank.applied().contains(&TxnId(5)));
    }

    // Proves that a snapshot restores a bank that votes and posts alike, and that
    // every cut snapshot is refused.
    #[test]
    fn snapshots_restore_the_same_bank() {
        let mut bank = Bank::new(2, 100);
        let mut votes = Vec::new();
        bank.prepare(&[bank_op(TxnId(1), 0, -70, false)], &mut votes);
        bank.prepare(&[bank_op(TxnId(2), 1, 30, false)], &mut votes);
        bank.commit(&[TxnId(2)]);
        let bytes = bank.snapshot().expect("the bank takes snapshots");
        let mut restored = Bank::new(0, 0);
        restored.restore(&bytes).expect("restores");
        assert_eq!(restored.snapshot(), Some(bytes.clone()));
        for cut in 0..bytes.len() {
            assert!(Bank::new(0, 0).restore(&bytes[..cut]).is_err(), "cut {cut}");
        }
        votes.clear();
        restored.prepare(&[bank_op(TxnId(3), 0, -40, false)], &mut votes);
        assert_eq!(votes, vec![Vote::No(Reason::INSUFFICIENT_FUNDS)]);
    }
}
