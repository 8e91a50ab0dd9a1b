//! The balance query: a network client reads a participant node's ledger, one page of
//! accounts per round trip, from the ledger the node's site thread holds in memory
//! (never from its log, which only its writer may read).
//!
//! ```text
//! BALANCES_QUERY (client → participant): first_account u64 | accounts_max u32
//! BALANCES       (participant → client): status u8 | accounts_total u64 |
//!                  first_account u64 | reservations u64 | last_lsn u64 |
//!                  durable_lsn u64 | count u32 | count × balance i64
//! ```
//!
//! A page is read in one turn of the site loop, so it is consistent in itself. Pages of
//! one ledger are consistent with each other when they carry the same `last_lsn`: the
//! site appends a record for every change of its ledger. `reservations` counts the
//! transactions the ledger holds undecided (prepared, not yet committed or aborted):
//! balances are final only when it is 0. `durable_lsn == last_lsn` says that everything
//! the page shows is synced to the node's log. Every integer is little-endian; decoding
//! checks every count before it allocates, as the rest of the codec does.

use crate::proto::record::{put_u32, put_u64, Reader};

use super::codec::CodecError;

/// The most accounts one `BALANCES` page carries (512 KiB of balances).
pub const BALANCES_PAGE_ACCOUNTS_MAX: usize = 1 << 16;

/// Bytes of a query body.
pub const QUERY_BYTES: usize = 8 + 4;
/// Bytes of a page body before its balances.
const PAGE_HEADER_BYTES: usize = 1 + 8 * 5 + 4;

const _: () = assert!(
    PAGE_HEADER_BYTES + BALANCES_PAGE_ACCOUNTS_MAX * 8 <= super::frame::FRAME_BODY_BYTES_MAX
);

/// Asks for the balances of accounts `first_account ..` (at most `accounts_max` of
/// them, and at most [`BALANCES_PAGE_ACCOUNTS_MAX`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BalancesQuery {
    pub first_account: u64,
    pub accounts_max: u32,
}

/// Whether the node could answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BalancesStatus {
    /// The page holds the balances asked for.
    Ok = 0,
    /// This participant's resource manager is not the built-in ledger.
    NotALedger = 1,
}

/// One page of a participant's balances, with what tells whether they are final.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BalancesPage {
    pub status: BalancesStatus,
    /// Accounts the ledger has (ids `0..accounts_total`).
    pub accounts_total: u64,
    /// The id of `balances[0]`.
    pub first_account: u64,
    /// Transactions the ledger holds reserved, not yet decided.
    pub reservations: u64,
    /// The last record the site appended when it read the page.
    pub last_lsn: u64,
    /// The last record synced to its log then.
    pub durable_lsn: u64,
    pub balances: Vec<i64>,
}

impl BalancesPage {
    /// Whether nothing is undecided and everything shown is durable.
    pub fn settled(&self) -> bool {
        self.reservations == 0 && self.durable_lsn >= self.last_lsn
    }
}

/// Appends a query body.
pub fn encode_query(query: &BalancesQuery, buf: &mut Vec<u8>) {
    put_u64(buf, query.first_account);
    put_u32(buf, query.accounts_max);
}

/// Decodes a query body (exactly [`QUERY_BYTES`]).
pub fn decode_query(body: &[u8]) -> Result<BalancesQuery, CodecError> {
    let mut reader = Reader::new(body);
    let query = BalancesQuery {
        first_account: reader.u64()?,
        accounts_max: reader.u32()?,
    };
    reader.finish()?;
    Ok(query)
}

/// Appends a page body.
pub fn encode_page(page: &BalancesPage, buf: &mut Vec<u8>) {
    buf.push(page.status as u8);
    put_u64(buf, page.accounts_total);
    put_u64(buf, page.first_account);
    put_u64(buf, page.reservations);
    put_u64(buf, page.last_lsn);
    put_u64(buf, page.durable_lsn);
    put_u32(buf, page.balances.len() as u32);
    for balance in &page.balances {
        buf.extend_from_slice(&balance.to_le_bytes());
    }
}

/// Decodes a page body: the count is checked against [`BALANCES_PAGE_ACCOUNTS_MAX`]
/// and the bytes left before anything is allocated, and the page must lie within the
/// ledger's accounts.
pub fn decode_page(body: &[u8]) -> Result<BalancesPage, CodecError> {
    let mut reader = Reader::new(body);
    let status = match reader.u8()? {
        0 => BalancesStatus::Ok,
        1 => BalancesStatus::NotALedger,
        value => {
            return Err(CodecError::BadByte {
                field: "balances status",
                value,
            })
        }
    };
    let accounts_total = reader.u64()?;
    let first_account = reader.u64()?;
    let reservations = reader.u64()?;
    let last_lsn = reader.u64()?;
    let durable_lsn = reader.u64()?;
    let count = reader.u32()? as usize;
    if count > BALANCES_PAGE_ACCOUNTS_MAX {
        return Err(CodecError::Count {
            field: "balances",
            count: count as u64,
            limit: BALANCES_PAGE_ACCOUNTS_MAX as u64,
        });
    }
    let beyond = first_account
        .checked_add(count as u64)
        .is_none_or(|end| end > accounts_total);
    if beyond {
        return Err(CodecError::Inconsistent(
            "a balances page beyond the ledger's accounts",
        ));
    }
    let raw = reader.take(count * 8)?;
    let balances = raw
        .chunks_exact(8)
        .map(|chunk| {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            i64::from_le_bytes(word)
        })
        .collect();
    reader.finish()?;
    Ok(BalancesPage {
        status,
        accounts_total,
        first_account,
        reservations,
        last_lsn,
        durable_lsn,
        balances,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page() -> BalancesPage {
        BalancesPage {
            status: BalancesStatus::Ok,
            accounts_total: 10,
            first_account: 4,
            reservations: 2,
            last_lsn: 99,
            durable_lsn: 98,
            balances: vec![5, -3, i64::MAX],
        }
    }

    // Proves that queries and pages come back whole, and that `settled` needs both no
    // reservation and everything durable.
    #[test]
    fn queries_and_pages_round_trip() {
        let query = BalancesQuery {
            first_account: 7,
            accounts_max: 100,
        };
        let mut buf = Vec::new();
        encode_query(&query, &mut buf);
        assert_eq!(buf.len(), QUERY_BYTES);
        assert_eq!(decode_query(&buf), Ok(query));
        let page = page();
        buf.clear();
        encode_page(&page, &mut buf);
        assert_eq!(decode_page(&buf), Ok(page.clone()));
        assert!(!page.settled());
        let settled = BalancesPage {
            reservations: 0,
            durable_lsn: 99,
            ..page
        };
        assert!(settled.settled());
    }

    // Proves that every truncation, a trailing byte, a bad status, an oversized count
    // and a page beyond the ledger are errors, never a panic or a large allocation.
    #[test]
    fn bad_bodies_are_errors() {
        let mut buf = Vec::new();
        encode_page(&page(), &mut buf);
        for len in 0..buf.len() {
            assert!(decode_page(&buf[..len]).is_err(), "truncated at {len}");
        }
        let mut trailing = buf.clone();
        trailing.push(0);
        assert!(decode_page(&trailing).is_err());
        let mut status = buf.clone();
        status[0] = 9;
        assert!(decode_page(&status).is_err());
        let mut beyond = buf.clone();
        beyond[9..17].copy_from_slice(&9u64.to_le_bytes());
        assert!(decode_page(&beyond).is_err(), "accounts 9..12 of 10");
        let mut huge = buf.clone();
        huge[PAGE_HEADER_BYTES - 4..PAGE_HEADER_BYTES].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode_page(&huge), Err(CodecError::Count { .. })));
        assert!(decode_query(&[0; QUERY_BYTES + 1]).is_err());
        assert!(decode_query(&[0; QUERY_BYTES - 1]).is_err());
    }
}
