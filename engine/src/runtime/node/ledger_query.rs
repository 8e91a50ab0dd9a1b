//! A participant node answers balance queries from the ledger its site thread holds.
//!
//! The ledger lives in the site thread's memory, and its log may only be read by its
//! writer (issue 13's lock), so neither the transport nor the gateway reads it: the
//! event loop queues each query ([`BalancesRequest`]) into a bounded channel that rings
//! the site's doorbell, and the site loop answers between two turns
//! (`SiteIo::answer_queries`), so that a
//! page shows the ledger as of one point between protocol events. The page carries the
//! reservations held (transactions not yet decided here) and the log positions, so the
//! client can tell final, durable balances from a moment in the middle of a batch.

use crate::ledger::Ledger;
use crate::pipeline::mpsc::MpscReceiver;
use crate::transport::balances::{
    BalancesPage, BalancesQuery, BalancesStatus, BALANCES_PAGE_ACCOUNTS_MAX,
};
use crate::transport::{BalancesRequest, ClientReply, ClientResponder};

/// Queries one turn answers at most, so that a flood of queries cannot delay the
/// protocol's next turn by more than a few pages' copying.
pub const QUERIES_PER_TURN_MAX: usize = 8;

/// The query side of a participant node's site loop.
pub struct LedgerQueries {
    requests: MpscReceiver<BalancesRequest>,
    responder: ClientResponder,
    /// Reused: the requests taken this turn.
    taken: Vec<BalancesRequest>,
}

impl LedgerQueries {
    /// `requests` must ring the site's doorbell (it is made with it), so that a query
    /// wakes an idle site.
    pub fn new(requests: MpscReceiver<BalancesRequest>, responder: ClientResponder) -> Self {
        LedgerQueries {
            requests,
            responder,
            taken: Vec::with_capacity(QUERIES_PER_TURN_MAX),
        }
    }

    /// Whether a query waits.
    pub fn has_items(&self) -> bool {
        self.requests.has_items()
    }

    /// Answers up to [`QUERIES_PER_TURN_MAX`] waiting queries from `ledger` (`None`: this
    /// participant is not the built-in ledger). A reply the transport's full queue
    /// refuses is dropped: the client's read times out and asks again.
    pub fn answer(&mut self, ledger: Option<&Ledger>, last_lsn: u64, durable_lsn: u64) {
        self.taken.clear();
        self.requests
            .pop_batch(&mut self.taken, QUERIES_PER_TURN_MAX);
        for request in self.taken.drain(..) {
            let page = page_of(ledger, request.query, last_lsn, durable_lsn);
            let _ = self
                .responder
                .send(request.client, ClientReply::Balances(page));
        }
    }
}

/// The page `query` asks for, bounded by [`BALANCES_PAGE_ACCOUNTS_MAX`] and by the
/// ledger's accounts (a query past the last account gets an empty page).
pub fn page_of(
    ledger: Option<&Ledger>,
    query: BalancesQuery,
    last_lsn: u64,
    durable_lsn: u64,
) -> BalancesPage {
    let Some(ledger) = ledger else {
        return BalancesPage {
            status: BalancesStatus::NotALedger,
            accounts_total: 0,
            first_account: 0,
            reservations: 0,
            last_lsn,
            durable_lsn,
            balances: Vec::new(),
        };
    };
    let accounts_total = ledger.accounts_len();
    let first_account = query.first_account.min(accounts_total);
    let count = (query.accounts_max as usize)
        .min(BALANCES_PAGE_ACCOUNTS_MAX)
        .min((accounts_total - first_account) as usize);
    let balances = ledger
        .balances()
        .skip(first_account as usize)
        .take(count)
        .collect();
    BalancesPage {
        status: BalancesStatus::Ok,
        accounts_total,
        first_account,
        reservations: ledger.reservations_len(),
        last_lsn,
        durable_lsn,
        balances,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::LedgerConfig;

    // Proves that a page is cut to the query, to the page bound and to the ledger's
    // accounts, and that a participant without a ledger says so.
    #[test]
    fn pages_are_bounded_by_the_query_and_the_ledger() {
        let mut config = LedgerConfig::new(10);
        config.balance_initial = 7;
        let ledger = Ledger::new(config).expect("valid ledger");
        let query = |first_account, accounts_max| BalancesQuery {
            first_account,
            accounts_max,
        };
        let page = page_of(Some(&ledger), query(4, 3), 9, 8);
        assert_eq!(page.balances, vec![7, 7, 7]);
        assert_eq!((page.first_account, page.accounts_total), (4, 10));
        assert_eq!(
            (page.reservations, page.last_lsn, page.durable_lsn),
            (0, 9, 8)
        );
        assert_eq!(
            page_of(Some(&ledger), query(8, u32::MAX), 0, 0)
                .balances
                .len(),
            2
        );
        let past = page_of(Some(&ledger), query(u64::MAX, 5), 0, 0);
        assert_eq!((past.first_account, past.balances.len()), (10, 0));
        let none = page_of(None, query(0, 5), 0, 0);
        assert_eq!(none.status, BalancesStatus::NotALedger);
    }
}
