//! What the ledgers already hold when the switch starts on an existing data directory:
//! the committed payments and reversals, read from the postings (the audit trail). The
//! engine forgets transaction ids across restarts; this keeps a retransmitted 0200 from
//! posting twice and lets a reversal find a payment made before the restart.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};

use tricommit_engine::ledger::Posting;
use tricommit_engine::runtime::{recover_ledgers, DumpError, META_FILE};

use super::book::{History, BOOK_ENTRIES_MAX, REVERSAL_ID_BIT};
use super::rules::{Key, Payment, LEDGER_ACQUIRER, LEDGER_FEES, LEDGER_ISSUER};

/// Reads the history of `data_dir`; an empty one for a directory the engine never used.
/// Postings are folded in as recovery streams them, and only the most recent
/// [`BOOK_ENTRIES_MAX`] payments are kept, so memory stays bounded however long the
/// audit trail is.
pub fn read(data_dir: &Path) -> Result<History, DumpError> {
    if !data_dir.join(META_FILE).exists() {
        return Ok(History::default());
    }
    let builder: Arc<Mutex<Builder>> = Arc::default();
    let sink = |index: usize| -> Option<tricommit_engine::ledger::PostingSink> {
        let builder = builder.clone();
        let ledger = u8::try_from(index).ok()?;
        Some(Box::new(move |batch: &[Posting]| {
            let mut builder = builder.lock().unwrap_or_else(|poison| poison.into_inner());
            for posting in batch {
                builder.add(ledger, posting);
            }
        }))
    };
    recover_ledgers(data_dir, sink)?;
    let builder = std::mem::take(&mut *builder.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(builder.history)
}

/// Folds postings into a [`History`]. `recover_ledgers` replays the ledgers in index
/// order, so the issuer's postings (ledger 0) come first: they name every payment and
/// every reversal (a payment's amount is never 0, so it always has an issuer leg);
/// the acquirer's and the fee ledger's then fill in the merchant account and the fee
/// of payments still held.
#[derive(Default)]
struct Builder {
    history: History,
    /// Payment ids in the order the issuer posted them, oldest first.
    order: VecDeque<u64>,
}

impl Builder {
    fn add(&mut self, ledger: u8, posting: &Posting) {
        let id = posting.txn.0;
        let delta = posting.delta.unsigned_abs();
        if ledger == LEDGER_ISSUER {
            if id & REVERSAL_ID_BIT != 0 {
                let original = id & !REVERSAL_ID_BIT;
                if self.history.payments.contains_key(&original) {
                    self.history.reversed.insert(original);
                }
            } else {
                self.add_payment(id, posting.account, delta);
            }
            return;
        }
        let Some(payment) = self.history.payments.get_mut(&id) else {
            // A reversal's leg, or a payment already forgotten for the bound.
            return;
        };
        match ledger {
            LEDGER_ACQUIRER => payment.merchant = posting.account,
            LEDGER_FEES => {
                payment.merchant = posting.account;
                payment.fee = delta;
            }
            _ => {}
        }
    }

    fn add_payment(&mut self, id: u64, issuer_account: u64, amount: u64) {
        let payment = Payment {
            key: Key {
                terminal: [b' '; 8],
                stan: [b'0'; 6],
                transmitted: [b'0'; 10],
            },
            pan: issuer_account,
            merchant: 0,
            amount,
            fee: 0,
            processing: *b"000000",
        };
        if self.history.payments.insert(id, payment).is_none() {
            self.order.push_back(id);
        }
        while self.order.len() > BOOK_ENTRIES_MAX {
            if let Some(oldest) = self.order.pop_front() {
                self.history.payments.remove(&oldest);
                self.history.reversed.remove(&oldest);
            }
        }
    }
}

/// Rebuilds a history from postings given in ledger order (for the tests).
#[cfg(test)]
fn from_postings(postings: &[(u8, Posting)]) -> History {
    let mut builder = Builder::default();
    for (ledger, posting) in postings {
        builder.add(*ledger, posting);
    }
    builder.history
}

#[cfg(test)]
mod tests {
    use super::*;
    use tricommit_engine::proto::TxnId;

    // A payment's three postings rebuild its accounts, amount and fee, and a reversal's
    // issuer posting marks the payment reversed.
    #[test]
    fn rebuilds_payments_and_reversals() {
        let posting = |txn: u64, account: u64, delta: i64| Posting {
            txn: TxnId(txn),
            account,
            delta,
        };
        let history = from_postings(&[
            (LEDGER_ISSUER, posting(7, 3, -1_000)),
            (LEDGER_ISSUER, posting(7 | REVERSAL_ID_BIT, 3, 1_000)),
            (LEDGER_ACQUIRER, posting(7, 9, 985)),
            (LEDGER_ACQUIRER, posting(7 | REVERSAL_ID_BIT, 9, -985)),
            (LEDGER_FEES, posting(7, 9, 15)),
            (LEDGER_FEES, posting(7 | REVERSAL_ID_BIT, 9, -15)),
        ]);
        let payment = history.payments[&7];
        assert_eq!(
            (payment.pan, payment.merchant, payment.amount, payment.fee),
            (3, 9, 1_000, 15)
        );
        assert!(history.reversed.contains(&7));
        assert_eq!(history.payments.len(), 1);
    }
}
