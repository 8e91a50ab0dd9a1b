//! The ledger's typed errors.

use thiserror::Error;

/// Everything that can go wrong in the ledger: a bad operation payload, a bad
/// configuration or setup call, or a snapshot that does not decode.
///
/// `prepare` never returns these: it turns a bad payload into a `No` vote. They reach the
/// caller only from [`LedgerOp::decode`](super::LedgerOp::decode), from setup and from
/// [`Ledger::snapshot_decode`](super::Ledger::snapshot_decode).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum LedgerError {
    /// The operation's kind byte is not one this version defines.
    #[error("operation kind byte {0} is not debit (1), credit (2) or check (3)")]
    OpKindUnknown(u8),
    /// The operation sets flag bits this version does not define.
    #[error("operation flags {0:#04x} set bits this version does not define")]
    OpFlagsUnknown(u8),
    /// The operation's reserved bytes are not zero.
    #[error("operation reserved bytes 18..24 must be zero")]
    OpReservedNonzero,
    /// The operation's amount does not fit an `i64` balance.
    #[error("operation amount {0} exceeds i64::MAX")]
    OpAmountTooLarge(u64),
    /// The configuration asks for more accounts than the ledger supports.
    #[error("{accounts} accounts is above the limit of {accounts_max}")]
    AccountsTooMany { accounts: u64, accounts_max: u64 },
    /// The configured reservation bound is zero or above the supported maximum.
    #[error("reservations_max {reservations_max} is not in 1..={reservations_max_limit}")]
    ReservationsMaxInvalid {
        reservations_max: u64,
        reservations_max_limit: u64,
    },
    /// The account id is not below the number of accounts.
    #[error("account {0} does not exist")]
    AccountUnknown(u64),
    /// The change would leave a balance below its limit.
    #[error("account {account}: balance {balance} would be below its limit {limit}")]
    BalanceBelowLimit {
        account: u64,
        balance: i64,
        limit: i64,
    },
    /// Setup calls may not change an account that holds reservations, because the
    /// reservations were checked against its old balance and limit.
    #[error("account {0} holds reservations, so its balance and limit cannot be set")]
    AccountReserved(u64),
    /// An account's state breaks an invariant (see `Ledger::check_invariants`). Only a
    /// bug can cause this.
    #[error("account {account} breaks the ledger invariants: {state:?}")]
    InvariantBroken { account: u64, state: super::Account },
    /// The snapshot is shorter than its fixed header.
    #[error("snapshot is {len} bytes, shorter than its {header_bytes}-byte header")]
    SnapshotTruncated { len: u64, header_bytes: u64 },
    /// The snapshot does not start with the ledger snapshot magic.
    #[error("snapshot magic is wrong: not a ledger snapshot")]
    SnapshotMagic,
    /// The snapshot was written by a format version this code does not read.
    #[error("snapshot format version {0} is not supported")]
    SnapshotVersion(u32),
    /// The snapshot's length does not match the counts in its header.
    #[error("snapshot is {len} bytes but its header describes {expected} bytes")]
    SnapshotLength { len: u64, expected: u64 },
    /// The snapshot's checksum does not match its bytes.
    #[error("snapshot checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    SnapshotChecksum { stored: u32, computed: u32 },
    /// The snapshot decodes but describes a state the ledger can never be in.
    #[error("snapshot is inconsistent: {0}")]
    SnapshotInconsistent(&'static str),
}
