//! The ledger snapshot format, so that recovery can start from a snapshot instead of
//! replaying an ever-growing log.
//!
//! All integers little-endian and fixed-width:
//!
//! | bytes                | field                                                    |
//! | -------------------- | -------------------------------------------------------- |
//! | 0..8                 | magic `b"TRILEDG1"`                                      |
//! | 8..12                | format version `u32`, currently 1                        |
//! | 12..16               | flags `u32`, must be 0                                   |
//! | 16..24               | `accounts u64`                                           |
//! | 24..32               | `reservations_max u64`                                   |
//! | 32..40               | `reservations_len u64`                                   |
//! | 40..                 | per account: `balance i64 \| limit i64` (16 bytes)       |
//! | then                 | per reservation, sorted by txn: `txn u64 \| account u64 \| amount u64 \| kind u8` (25 bytes) |
//! | last 4               | crc32c of every byte before it                           |
//!
//! The pending sums are not stored: decoding recomputes them from the reservations, so a
//! snapshot cannot hold sums that disagree with its reservations. Reservations are
//! sorted so that two equal ledgers encode to the same bytes. Decoding checks the
//! length against the header before it allocates, then the checksum, then every
//! invariant the ledger keeps, and names the first problem as a typed error.

use super::table::{Probe, Slot};
use super::{check_config, Account, HoldKind, Ledger, LedgerError, OP_AMOUNT_MAX};

const MAGIC: [u8; 8] = *b"TRILEDG1";
const VERSION: u32 = 1;
const HEADER_BYTES: usize = 40;
const ACCOUNT_BYTES: usize = 16;
const RESERVATION_BYTES: usize = 25;
const CHECKSUM_BYTES: usize = 4;

impl Ledger {
    /// Appends this ledger's snapshot to `out`.
    pub fn snapshot_encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        let held = self.reservations_sorted();
        out.reserve(
            HEADER_BYTES
                + ACCOUNT_BYTES * self.accounts.len()
                + RESERVATION_BYTES * held.len()
                + CHECKSUM_BYTES,
        );
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&self.accounts_len().to_le_bytes());
        out.extend_from_slice(&self.reservations_max().to_le_bytes());
        out.extend_from_slice(&(held.len() as u64).to_le_bytes());
        for account in &self.accounts {
            out.extend_from_slice(&account.balance.to_le_bytes());
            out.extend_from_slice(&account.limit.to_le_bytes());
        }
        for reservation in &held {
            out.extend_from_slice(&reservation.txn.to_le_bytes());
            out.extend_from_slice(&reservation.account.to_le_bytes());
            out.extend_from_slice(&reservation.amount.to_le_bytes());
            out.push(reservation.kind as u8);
        }
        let checksum = crc32c::crc32c(&out[start..]);
        out.extend_from_slice(&checksum.to_le_bytes());
    }

    /// Rebuilds a ledger from a snapshot. Any byte pattern gives a ledger or a typed
    /// error; the posting sink is not part of a snapshot and starts unset.
    pub fn snapshot_decode(bytes: &[u8]) -> Result<Ledger, LedgerError> {
        let header = Header::decode(bytes)?;
        let mut reader = Reader {
            bytes: &bytes[HEADER_BYTES..bytes.len() - CHECKSUM_BYTES],
        };
        let mut accounts = Vec::with_capacity(header.accounts as usize);
        for _ in 0..header.accounts {
            let balance = reader.u64() as i64;
            let limit = reader.u64() as i64;
            accounts.push(Account::new(balance, limit));
        }
        let mut ledger = Ledger::from_parts(accounts, header.reservations_max as usize);
        let mut txn_previous = None;
        for _ in 0..header.reservations_len {
            let slot = decode_reservation(&mut reader, header.accounts, txn_previous)?;
            txn_previous = Some(slot.0);
            ledger.hold(slot.0, slot.1)?;
        }
        if !ledger.accounts.iter().all(Account::is_consistent) {
            return Err(LedgerError::SnapshotInconsistent(
                "an account's reservations exceed its funds or overflow its balance",
            ));
        }
        Ok(ledger)
    }

    /// Adds one decoded reservation to the table and to its account's pending sum.
    fn hold(&mut self, txn: u64, slot: Slot) -> Result<(), LedgerError> {
        let overflow = LedgerError::SnapshotInconsistent("an account's pending sum overflows");
        let account = &mut self.accounts[slot.account()];
        let pending = match slot.kind() {
            HoldKind::Debit => &mut account.debits_pending,
            HoldKind::Credit => &mut account.credits_pending,
        };
        *pending = pending.checked_add(slot.amount()).ok_or(overflow)?;
        // Transaction ids are strictly increasing, so the id is not in the table yet.
        match self.reservations.probe(txn) {
            Probe::Vacant(index) => self.reservations.insert_at(index, slot),
            Probe::Found(_) => {
                return Err(LedgerError::SnapshotInconsistent(
                    "a transaction id repeats",
                ))
            }
        }
        Ok(())
    }
}

/// The checked header of a snapshot whose length and checksum are right.
struct Header {
    accounts: u64,
    reservations_max: u64,
    reservations_len: u64,
}

impl Header {
    fn decode(bytes: &[u8]) -> Result<Header, LedgerError> {
        if bytes.len() < HEADER_BYTES + CHECKSUM_BYTES {
            return Err(LedgerError::SnapshotTruncated {
                len: bytes.len() as u64,
                header_bytes: (HEADER_BYTES + CHECKSUM_BYTES) as u64,
            });
        }
        let mut reader = Reader { bytes };
        if reader.take::<8>() != MAGIC {
            return Err(LedgerError::SnapshotMagic);
        }
        let version = reader.u32();
        if version != VERSION {
            return Err(LedgerError::SnapshotVersion(version));
        }
        if reader.u32() != 0 {
            return Err(LedgerError::SnapshotInconsistent("header flags are set"));
        }
        let header = Header {
            accounts: reader.u64(),
            reservations_max: reader.u64(),
            reservations_len: reader.u64(),
        };
        check_config(header.accounts, header.reservations_max)?;
        if header.reservations_len > header.reservations_max {
            return Err(LedgerError::SnapshotInconsistent(
                "more reservations than reservations_max",
            ));
        }
        header.check_length_and_checksum(bytes)?;
        Ok(header)
    }

    /// Checks the length the counts imply (before anything is allocated from them),
    /// then the checksum.
    fn check_length_and_checksum(&self, bytes: &[u8]) -> Result<(), LedgerError> {
        // Both counts are bounded by `check_config`, so this cannot overflow a `u64`.
        let expected = (HEADER_BYTES + CHECKSUM_BYTES) as u64
            + ACCOUNT_BYTES as u64 * self.accounts
            + RESERVATION_BYTES as u64 * self.reservations_len;
        if bytes.len() as u64 != expected {
            return Err(LedgerError::SnapshotLength {
                len: bytes.len() as u64,
                expected,
            });
        }
        let (body, stored) = bytes.split_at(bytes.len() - CHECKSUM_BYTES);
        let stored = Reader { bytes: stored }.u32();
        let computed = crc32c::crc32c(body);
        if stored != computed {
            return Err(LedgerError::SnapshotChecksum { stored, computed });
        }
        Ok(())
    }
}

/// Reads one reservation record and checks it on its own and against its predecessor.
fn decode_reservation(
    reader: &mut Reader<'_>,
    accounts: u64,
    txn_previous: Option<u64>,
) -> Result<(u64, Slot), LedgerError> {
    let txn = reader.u64();
    let account = reader.u64();
    let amount = reader.u64();
    let kind = match reader.take::<1>()[0] {
        1 => HoldKind::Debit,
        2 => HoldKind::Credit,
        _ => {
            return Err(LedgerError::SnapshotInconsistent(
                "a reservation kind is unknown",
            ))
        }
    };
    if txn_previous.is_some_and(|previous| previous >= txn) {
        return Err(LedgerError::SnapshotInconsistent(
            "reservations are not sorted by unique transaction id",
        ));
    }
    if account >= accounts {
        return Err(LedgerError::SnapshotInconsistent(
            "a reservation names no account",
        ));
    }
    if amount == 0 || amount > OP_AMOUNT_MAX {
        return Err(LedgerError::SnapshotInconsistent(
            "a reservation amount is out of range",
        ));
    }
    // `account < accounts <= ACCOUNTS_MAX <= 2^32`, so it fits the slot's `u32`.
    Ok((txn, Slot::new(txn, account as u32, amount, kind)))
}

/// Reads fixed-width little-endian fields from a slice whose length was checked first.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let (head, rest) = self.bytes.split_at(N);
        self.bytes = rest;
        let mut out = [0u8; N];
        out.copy_from_slice(head);
        out
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }

    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
}
