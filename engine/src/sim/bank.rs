//! A tiny bank: the simulator's resource manager, simple enough to check invariant 8
//! by hand. Not the product ledger (that lives in `ledger/`).
//!
//! An operation is `account u32 | delta i64 | force_no u8 | zero padding`. A debit
//! holds its amount until commit or abort; a credit is not spendable before commit.
//! `delta == 0` votes read-only; `force_no == 1` votes no (the workload uses it to
//! exercise no votes deterministically).

use std::collections::{BTreeSet, HashMap};

use crate::proto::{Op, Reason, ResourceManager, TxnId, Vote, OP_PAYLOAD_BYTES};

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
}
