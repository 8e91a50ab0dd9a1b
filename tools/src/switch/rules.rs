//! What a request means for the ledgers: validation, account mapping, the fee, the
//! transaction's legs, and the field 39 code for every outcome. No I/O here.

use tricommit_engine::ledger::{LedgerOp, OpKind, OP_AMOUNT_MAX};
use tricommit_engine::proto::{Reason, TxnId, OP_PAYLOAD_BYTES};
use tricommit_engine::{AbortReason, Outcome, Priority, Txn};

use super::codec::Message;

/// Participant indexes: the order of the engine's participants, and the ledger numbers
/// that `tricommit ledger dump` prints.
pub const LEDGER_ISSUER: u8 = 0;
pub const LEDGER_ACQUIRER: u8 = 1;
pub const LEDGER_FEES: u8 = 2;

/// One basis point is 1/10,000; a fee rate is at most the whole amount.
pub const FEE_BPS_MAX: u64 = 10_000;
/// The shortest PAN taken (ISO/IEC 7812 allows 8 digits for new ranges, 12 in practice).
pub const PAN_DIGITS_MIN: usize = 12;

/// Field 39 response codes.
pub mod code {
    pub const APPROVED: &[u8; 2] = b"00";
    pub const INVALID_AMOUNT: &[u8; 2] = b"13";
    pub const INVALID_CARD: &[u8; 2] = b"14";
    pub const FORMAT_ERROR: &[u8; 2] = b"30";
    pub const INSUFFICIENT_FUNDS: &[u8; 2] = b"51";
    pub const UNAVAILABLE: &[u8; 2] = b"91";
    pub const DUPLICATE: &[u8; 2] = b"94";
    pub const MALFUNCTION: &[u8; 2] = b"96";
}

/// Fields a 0210 copies from its 0200 (39 and 38 are the switch's own).
pub const ECHO_0210: &[u8] = &[2, 3, 4, 7, 11, 12, 13, 37, 41, 42, 49];
/// Fields a 0430 copies from its 0420.
pub const ECHO_0430: &[u8] = &[2, 3, 4, 7, 11, 12, 13, 37, 41, 42, 49, 90];
/// Fields a 0810 copies from its 0800.
pub const ECHO_0810: &[u8] = &[7, 11, 37, 41, 70];

/// Field 70 values of an 0800: sign-on, sign-off, echo test.
pub const NETWORK_SIGN_ON: &[u8] = b"001";
pub const NETWORK_SIGN_OFF: &[u8] = b"002";
pub const NETWORK_ECHO: &[u8] = b"301";

/// The identity of a request in ISO 8583 terms: terminal (41), STAN (11) and
/// transmission date and time (7). It is the idempotency key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    pub terminal: [u8; 8],
    pub stan: [u8; 6],
    pub transmitted: [u8; 10],
}

/// What the ledgers need of a payment, and what a retransmission must repeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Payment {
    pub key: Key,
    pub pan: u64,
    pub merchant: u64,
    pub amount: u64,
    /// The interchange fee, fixed when the payment is read (see [`Tariff::fee`]).
    pub fee: u64,
    pub processing: [u8; 6],
}

/// A reversal advice: its own key, and the key of the 0200 it reverses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reversal {
    pub key: Key,
    pub original: Key,
}

/// The rates and sizes the switch was started with.
#[derive(Debug, Clone, Copy)]
pub struct Tariff {
    pub accounts: u64,
    pub fee_bps: u64,
}

impl Tariff {
    /// The interchange fee: `amount × fee_bps / 10,000`, rounded down.
    pub fn fee(&self, amount: u64) -> u64 {
        (u128::from(amount) * u128::from(self.fee_bps) / u128::from(FEE_BPS_MAX)) as u64
    }

    /// The payment as one transaction whose legs sum to zero: the cardholder's issuer
    /// account pays `amount`, the merchant's acquirer account gets `amount − fee`, and
    /// the fee ledger's account of the same merchant number gets `fee`.
    pub fn payment_txn(&self, id: TxnId, payment: &Payment) -> Txn {
        self.legs(id, payment, false)
    }

    /// The compensating transaction of a reversal: every leg of the payment, inverted.
    pub fn reversal_txn(&self, id: TxnId, payment: &Payment) -> Txn {
        self.legs(id, payment, true)
    }

    fn legs(&self, id: TxnId, payment: &Payment, reverse: bool) -> Txn {
        let fee = payment.fee.min(payment.amount);
        let issuer = payment.pan % self.accounts;
        let acquirer = payment.merchant % self.accounts;
        let (pay, receive) = if reverse {
            (OpKind::Credit, OpKind::Debit)
        } else {
            (OpKind::Debit, OpKind::Credit)
        };
        let legs = [
            (LEDGER_ISSUER, op(pay, issuer, payment.amount)),
            (LEDGER_ACQUIRER, op(receive, acquirer, payment.amount - fee)),
            (LEDGER_FEES, op(receive, acquirer, fee)),
        ];
        let mut txn = Txn::new(id, Priority::Normal);
        for (ledger, payload) in legs {
            // The three participants differ, so adding their legs cannot fail.
            txn = txn
                .with_leg(ledger, payload)
                .expect("three distinct ledgers");
        }
        txn
    }
}

/// One leg's payload. Amounts are at most 12 decimal digits (field 4), far below
/// `OP_AMOUNT_MAX`, so the operation is always valid.
fn op(kind: OpKind, account: u64, amount: u64) -> [u8; OP_PAYLOAD_BYTES] {
    debug_assert!(amount <= OP_AMOUNT_MAX);
    LedgerOp {
        account,
        amount,
        kind,
    }
    .encode()
}

/// Field 39 for a payment's outcome.
pub fn outcome_code(outcome: Outcome) -> &'static [u8; 2] {
    match outcome {
        Outcome::Committed => code::APPROVED,
        Outcome::Aborted(AbortReason::Rejected(Reason::INSUFFICIENT_FUNDS)) => {
            code::INSUFFICIENT_FUNDS
        }
        Outcome::Aborted(AbortReason::Rejected(Reason::TIMEOUT | Reason::UNANSWERED))
        | Outcome::Aborted(AbortReason::Terminated)
        | Outcome::Aborted(AbortReason::Shutdown)
        | Outcome::InDoubt => code::UNAVAILABLE,
        Outcome::Aborted(AbortReason::Rejected(_)) => code::MALFUNCTION,
    }
}

/// A field that must be present with exactly `N` ASCII digits.
fn digits<const N: usize>(message: &Message, field: u8) -> Option<[u8; N]> {
    let value = message.get(field)?;
    let array: [u8; N] = value.try_into().ok()?;
    array.iter().all(u8::is_ascii_digit).then_some(array)
}

/// The value of an all-digit string of at most 19 digits (a `u64` holds them).
fn number(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        value
            .iter()
            .fold(0, |acc, digit| acc * 10 + u64::from(digit - b'0')),
    )
}

/// Whether an all-digit PAN passes the Luhn check.
pub fn luhn_valid(pan: &[u8]) -> bool {
    let mut sum = 0u32;
    for (position, digit) in pan.iter().rev().enumerate() {
        let mut value = u32::from(digit - b'0');
        if position % 2 == 1 {
            value *= 2;
            if value > 9 {
                value -= 9;
            }
        }
        sum += value;
    }
    sum % 10 == 0
}

/// The key of a request: fields 41, 11 and 7, all present and well-formed.
pub fn key(message: &Message) -> Option<Key> {
    Some(Key {
        terminal: message.get(41)?.try_into().ok()?,
        stan: digits(message, 11)?,
        transmitted: digits(message, 7)?,
    })
}

/// Reads a 0200, or says which field 39 code refuses it before any posting.
pub fn payment(message: &Message, tariff: &Tariff) -> Result<Payment, &'static [u8; 2]> {
    let key = key(message).ok_or(code::FORMAT_ERROR)?;
    let processing: [u8; 6] = digits(message, 3).ok_or(code::FORMAT_ERROR)?;
    // Processing code 00xxxx is a purchase (goods and services), the one this switch posts.
    if processing[..2] != *b"00" {
        return Err(code::FORMAT_ERROR);
    }
    let amount = digits::<12>(message, 4).ok_or(code::FORMAT_ERROR)?;
    digits::<3>(message, 49).ok_or(code::FORMAT_ERROR)?;
    let merchant = message
        .get(42)
        .map(|value| value.trim_ascii())
        .and_then(number)
        .ok_or(code::FORMAT_ERROR)?;
    let pan = message.get(2).ok_or(code::FORMAT_ERROR)?;
    let pan_ok = pan.len() >= PAN_DIGITS_MIN && pan.iter().all(u8::is_ascii_digit);
    if !pan_ok || !luhn_valid(pan) {
        return Err(code::INVALID_CARD);
    }
    let amount = number(&amount).ok_or(code::FORMAT_ERROR)?;
    if amount == 0 {
        return Err(code::INVALID_AMOUNT);
    }
    Ok(Payment {
        key,
        pan: number(pan).ok_or(code::INVALID_CARD)?,
        merchant,
        amount,
        fee: tariff.fee(amount),
        processing,
    })
}

/// Reads a 0420: its own key and, from field 90, the original's MTI (0200), STAN and
/// transmission date and time; the original's terminal is the reversal's own (41).
pub fn reversal(message: &Message) -> Result<Reversal, &'static [u8; 2]> {
    let key = key(message).ok_or(code::FORMAT_ERROR)?;
    let original: [u8; 42] = digits(message, 90).ok_or(code::FORMAT_ERROR)?;
    if original[..4] != *b"0200" {
        return Err(code::FORMAT_ERROR);
    }
    let mut stan = [0; 6];
    stan.copy_from_slice(&original[4..10]);
    let mut transmitted = [0; 10];
    transmitted.copy_from_slice(&original[10..20]);
    Ok(Reversal {
        key,
        original: Key {
            terminal: key.terminal,
            stan,
            transmitted,
        },
    })
}

/// The response to `request` of type `mti`: the echoed fields and field 39.
pub fn response(request: &Message, mti: [u8; 4], echo: &[u8], code: &[u8; 2]) -> Message {
    let mut response = Message::new(mti);
    for &field in echo {
        response.echo(request, field);
    }
    response.set(39, code);
    response
}

/// The response MTI of a request or advice MTI (`0200` → `0210`), or `None` for a
/// message that is itself a response or an acknowledgement (nothing is answered).
pub fn response_mti(mti: [u8; 4]) -> Option<[u8; 4]> {
    match mti[2] {
        b'0' | b'2' => Some([mti[0], mti[1], mti[2] + 1, mti[3]]),
        _ => None,
    }
}

/// The approval code of field 38: six digits derived from the transaction id, so
/// that a retransmission gets the same one.
pub fn approval_code(id: TxnId) -> [u8; 6] {
    let mut code = [b'0'; 6];
    let mut value = id.0 % 1_000_000;
    for slot in code.iter_mut().rev() {
        *slot = b'0' + (value % 10) as u8;
        value /= 10;
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    // The Luhn check accepts the standard test PANs and refuses a one-digit change.
    #[test]
    fn luhn() {
        assert!(luhn_valid(b"4111111111111111"));
        assert!(luhn_valid(b"5500005555555559"));
        assert!(!luhn_valid(b"4111111111111112"));
    }

    // A payment's legs sum to zero, and its reversal's legs invert each of them.
    #[test]
    fn legs_sum_to_zero() {
        let tariff = Tariff {
            accounts: 100,
            fee_bps: 150,
        };
        let payment = Payment {
            key: Key {
                terminal: *b"TERM0001",
                stan: *b"000001",
                transmitted: *b"1204161500",
            },
            pan: 4111111111111111,
            merchant: 42,
            amount: 10_000,
            fee: 150,
            processing: *b"000000",
        };
        let sum = |txn: Txn| -> i128 {
            txn.legs()
                .iter()
                .map(|leg| {
                    let op = LedgerOp::decode(&leg.payload).expect("valid op");
                    match op.kind {
                        OpKind::Debit => -i128::from(op.amount),
                        _ => i128::from(op.amount),
                    }
                })
                .sum()
        };
        assert_eq!(tariff.fee(10_000), 150);
        assert_eq!(sum(tariff.payment_txn(TxnId(1), &payment)), 0);
        assert_eq!(sum(tariff.reversal_txn(TxnId(2), &payment)), 0);
        assert_eq!(response_mti(*b"0200"), Some(*b"0210"));
        assert_eq!(response_mti(*b"0420"), Some(*b"0430"));
        assert_eq!(response_mti(*b"0210"), None);
    }
}
