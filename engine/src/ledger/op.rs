//! `LedgerOp`: the codec of the 24-byte operation payload a transaction carries for a
//! ledger participant.
//!
//! Layout, all integers little-endian and fixed-width:
//!
//! | bytes  | field    | meaning                                                      |
//! | ------ | -------- | ------------------------------------------------------------ |
//! | 0..8   | account  | `u64`, dense id in `0..accounts`                             |
//! | 8..16  | amount   | `u64` magnitude, at most `i64::MAX`                          |
//! | 16     | kind     | `1` debit, `2` credit, `3` check (read-only funds check)     |
//! | 17     | flags    | `u8`, no flag is defined yet: must be `0`                    |
//! | 18..24 | reserved | must be zero                                                 |
//!
//! An explicit kind byte with an unsigned magnitude is used instead of a signed amount
//! so that there is no `i64::MIN` whose negation overflows, and so that a read-only
//! check is a kind of its own rather than a magic amount. Flags and reserved bytes must
//! be zero so that a later version can give them a meaning without old ledgers silently
//! misreading new operations.

use super::LedgerError;
use crate::proto::OP_PAYLOAD_BYTES;

/// What an operation does to its account.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum OpKind {
    /// Take `amount` out: prepare holds it against the available balance.
    Debit = 1,
    /// Put `amount` in: prepare holds it as pending, spendable only once posted.
    Credit = 2,
    /// Vote `ReadOnly` if `amount` is available right now, `No` otherwise; holds nothing.
    Check = 3,
}

impl OpKind {
    fn from_byte(byte: u8) -> Result<OpKind, LedgerError> {
        match byte {
            1 => Ok(OpKind::Debit),
            2 => Ok(OpKind::Credit),
            3 => Ok(OpKind::Check),
            other => Err(LedgerError::OpKindUnknown(other)),
        }
    }
}

/// One decoded ledger operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LedgerOp {
    pub account: u64,
    /// The magnitude; always at most `i64::MAX` (the constructors and `decode` see to it).
    pub amount: u64,
    pub kind: OpKind,
}

/// The largest amount an operation may carry, so that it always fits an `i64` balance.
pub const OP_AMOUNT_MAX: u64 = i64::MAX as u64;

const ACCOUNT_OFFSET: usize = 0;
const AMOUNT_OFFSET: usize = 8;
const TAIL_OFFSET: usize = 16;
const _: () = assert!(TAIL_OFFSET + 8 == OP_PAYLOAD_BYTES);

impl LedgerOp {
    /// A debit of `amount` from `account`. Fails if `amount` exceeds [`OP_AMOUNT_MAX`].
    pub fn debit(account: u64, amount: u64) -> Result<LedgerOp, LedgerError> {
        LedgerOp::new(account, amount, OpKind::Debit)
    }

    /// A credit of `amount` to `account`. Fails if `amount` exceeds [`OP_AMOUNT_MAX`].
    pub fn credit(account: u64, amount: u64) -> Result<LedgerOp, LedgerError> {
        LedgerOp::new(account, amount, OpKind::Credit)
    }

    /// A read-only check that `account` could cover `amount` right now.
    pub fn check(account: u64, amount: u64) -> Result<LedgerOp, LedgerError> {
        LedgerOp::new(account, amount, OpKind::Check)
    }

    fn new(account: u64, amount: u64, kind: OpKind) -> Result<LedgerOp, LedgerError> {
        if amount > OP_AMOUNT_MAX {
            return Err(LedgerError::OpAmountTooLarge(amount));
        }
        Ok(LedgerOp {
            account,
            amount,
            kind,
        })
    }

    /// Encodes the operation into its 24-byte payload.
    pub fn encode(&self) -> [u8; OP_PAYLOAD_BYTES] {
        let mut payload = [0u8; OP_PAYLOAD_BYTES];
        payload[ACCOUNT_OFFSET..AMOUNT_OFFSET].copy_from_slice(&self.account.to_le_bytes());
        payload[AMOUNT_OFFSET..TAIL_OFFSET].copy_from_slice(&self.amount.to_le_bytes());
        payload[TAIL_OFFSET] = self.kind as u8;
        payload
    }

    /// Decodes a payload; any byte pattern gives an operation or a typed error.
    #[inline]
    pub fn decode(payload: &[u8; OP_PAYLOAD_BYTES]) -> Result<LedgerOp, LedgerError> {
        let account = read_u64(payload, ACCOUNT_OFFSET);
        let amount = read_u64(payload, AMOUNT_OFFSET);
        // The kind, the flags and the reserved bytes are read as one word so that the
        // common, valid case costs one comparison.
        let tail = read_u64(payload, TAIL_OFFSET);
        if tail >> 8 != 0 {
            return Err(tail_error(payload));
        }
        let kind = OpKind::from_byte(tail as u8)?;
        if amount > OP_AMOUNT_MAX {
            return Err(LedgerError::OpAmountTooLarge(amount));
        }
        Ok(LedgerOp {
            account,
            amount,
            kind,
        })
    }
}

#[inline]
fn read_u64(payload: &[u8; OP_PAYLOAD_BYTES], offset: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&payload[offset..offset + 8]);
    u64::from_le_bytes(word)
}

/// Names the first bad byte after the kind: the flags, else the reserved bytes.
#[cold]
fn tail_error(payload: &[u8; OP_PAYLOAD_BYTES]) -> LedgerError {
    let flags = payload[TAIL_OFFSET + 1];
    if flags != 0 {
        LedgerError::OpFlagsUnknown(flags)
    } else {
        LedgerError::OpReservedNonzero
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves that every kind survives an encode/decode round trip with its fields intact.
    #[test]
    fn round_trip_each_kind() {
        let ops = [
            LedgerOp::debit(7, 100).unwrap(),
            LedgerOp::credit(u64::MAX, OP_AMOUNT_MAX).unwrap(),
            LedgerOp::check(0, 0).unwrap(),
        ];
        for op in ops {
            assert_eq!(LedgerOp::decode(&op.encode()), Ok(op));
        }
    }

    // Proves that each kind of bad byte is named by its own typed error.
    #[test]
    fn bad_bytes_give_typed_errors() {
        let good = LedgerOp::debit(1, 2).unwrap().encode();
        let mut bad_kind = good;
        bad_kind[16] = 9;
        assert_eq!(
            LedgerOp::decode(&bad_kind),
            Err(LedgerError::OpKindUnknown(9))
        );
        let mut bad_flags = good;
        bad_flags[17] = 0x80;
        assert_eq!(
            LedgerOp::decode(&bad_flags),
            Err(LedgerError::OpFlagsUnknown(0x80))
        );
        let mut bad_reserved = good;
        bad_reserved[23] = 1;
        assert_eq!(
            LedgerOp::decode(&bad_reserved),
            Err(LedgerError::OpReservedNonzero)
        );
        let mut bad_amount = good;
        bad_amount[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(
            LedgerOp::decode(&bad_amount),
            Err(LedgerError::OpAmountTooLarge(u64::MAX))
        );
        assert_eq!(
            LedgerOp::credit(0, OP_AMOUNT_MAX + 1),
            Err(LedgerError::OpAmountTooLarge(OP_AMOUNT_MAX + 1))
        );
    }

    // Proves that the zero payload is malformed (kind 0), so a zeroed buffer is never an op.
    #[test]
    fn zero_payload_is_malformed() {
        assert_eq!(
            LedgerOp::decode(&[0u8; OP_PAYLOAD_BYTES]),
            Err(LedgerError::OpKindUnknown(0))
        );
    }
}
