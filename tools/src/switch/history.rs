//! What the ledgers already hold when the switch starts on an existing data directory:
//! the committed payments and reversals, read from the postings (the audit trail). The
//! engine forgets transaction ids across restarts; this keeps a retransmitted 0200 from
//! posting twice and lets a reversal find a payment made before the restart.

use std::path::Path;
use std::sync::{Arc, Mutex};

use tricommit_engine::ledger::Posting;
use tricommit_engine::runtime::{recover_ledgers, DumpError, META_FILE};

use super::book::{History, REVERSAL_ID_BIT};
use super::rules::{Key, Payment, LEDGER_ACQUIRER, LEDGER_FEES, LEDGER_ISSUER};

/// Reads the history of `data_dir`; an empty one for a directory the engine never used.
pub fn read(data_dir: &Path) -> Result<History, DumpError> {
    if !data_dir.join(META_FILE).exists() {
        return Ok(History::default());
    }
    let postings: Arc<Mutex<Vec<(u8, Posting)>>> = Arc::default();
    let sink = |index: usize| -> Option<tricommit_engine::ledger::PostingSink> {
        let postings = postings.clone();
        let ledger = u8::try_from(index).ok()?;
        Some(Box::new(move |batch: &[Posting]| {
            let mut postings = postings.lock().unwrap_or_else(|poison| poison.into_inner());
            postings.extend(batch.iter().map(|posting| (ledger, *posting)));
        }))
    };
    recover_ledgers(data_dir, sink)?;
    let postings = std::mem::take(&mut *postings.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(from_postings(&postings))
}

/// Rebuilds the payments (accounts, amount, fee) and the reversed ids from postings.
fn from_postings(postings: &[(u8, Posting)]) -> History {
    let mut history = History::default();
    let unknown_key = Key {
        terminal: [b' '; 8],
        stan: [b'0'; 6],
        transmitted: [b'0'; 10],
    };
    for &(ledger, posting) in postings {
        let id = posting.txn.0;
        if id & REVERSAL_ID_BIT != 0 {
            if ledger == LEDGER_ISSUER {
                history.reversed.insert(id & !REVERSAL_ID_BIT);
            }
            continue;
        }
        let payment = history.payments.entry(id).or_insert(Payment {
            key: unknown_key,
            pan: 0,
            merchant: 0,
            amount: 0,
            fee: 0,
            processing: *b"000000",
        });
        let delta = posting.delta.unsigned_abs();
        match ledger {
            LEDGER_ISSUER => {
                payment.pan = posting.account;
                payment.amount = delta;
            }
            LEDGER_ACQUIRER => payment.merchant = posting.account,
            LEDGER_FEES => {
                payment.merchant = posting.account;
                payment.fee = delta;
            }
            _ => {}
        }
    }
    history
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
            (LEDGER_ACQUIRER, posting(7, 9, 985)),
            (LEDGER_FEES, posting(7, 9, 15)),
            (LEDGER_ISSUER, posting(7 | REVERSAL_ID_BIT, 3, 1_000)),
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
