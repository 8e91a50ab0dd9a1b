//! ISO 8583 messages exactly as pyiso8583's `iso8583.specs.default_ascii` encodes them.
//!
//! A message is the message type indicator (MTI, 4 ASCII digits), the primary bitmap
//! (16 ASCII hex digits), the secondary bitmap when bit 1 is set (16 more), and then
//! every field whose bit is set, in field order. A fixed field is exactly `len_max`
//! ASCII bytes; a variable field is `len_prefix_digits` ASCII decimal digits giving its
//! length, then that many bytes (at most `len_max`). [`FIELDS`] is the table, copied
//! from pyiso8583 4.0.1's spec dict (data and length encodings are ASCII for every
//! field). Bit 65 of that spec announces a tertiary bitmap, which this switch does not
//! take: a message with it is a format error.
//!
//! The codec does no I/O and never panics on input: every byte string decodes to a
//! message or to a [`DecodeError`] that says what and where. [`decode_partial`] also
//! returns the fields decoded before the error, so that the switch can still answer a
//! malformed request with its STAN and a format-error code.

/// The highest field number (a secondary bitmap; no tertiary one).
pub const FIELD_NUMBER_MAX: u8 = 128;
/// The bit of the primary bitmap that announces the secondary bitmap.
pub const FIELD_SECONDARY_BITMAP: u8 = 1;
/// The bit that pyiso8583 reads as "a tertiary bitmap follows"; refused here.
pub const FIELD_TERTIARY_BITMAP: u8 = 65;
/// Bytes of the MTI and of one bitmap in ASCII hex.
pub const MTI_BYTES: usize = 4;
pub const BITMAP_HEX_BYTES: usize = 16;

/// One field's encoding in `default_ascii`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldSpec {
    /// 0 for a fixed field; else the number of ASCII digits of its length prefix.
    pub len_prefix_digits: u8,
    /// The fixed length, or the largest variable length, in bytes.
    pub len_max: u16,
    /// pyiso8583's description of the field.
    pub name: &'static str,
}

/// Fields 1 to 128, at index `field - 1`.
pub static FIELDS: [FieldSpec; FIELD_NUMBER_MAX as usize] = [
    fixed(16, "Bitmap, Secondary"),                    // 1
    llvar(19, "Primary Account Number (PAN)"),         // 2
    fixed(6, "Processing Code"),                       // 3
    fixed(12, "Amount, Transaction"),                  // 4
    fixed(12, "Amount, Settlement"),                   // 5
    fixed(12, "Amount, Cardholder Billing"),           // 6
    fixed(10, "Transmission Date and Time"),           // 7
    fixed(8, "Amount, Cardholder Billing Fee"),        // 8
    fixed(8, "Conversion Rate, Settlement"),           // 9
    fixed(8, "Conversion Rate, Cardholder Billing"),   // 10
    fixed(6, "System Trace Audit Number"),             // 11
    fixed(6, "Time, Local Transaction"),               // 12
    fixed(4, "Date, Local Transaction"),               // 13
    fixed(4, "Date, Expiration"),                      // 14
    fixed(4, "Date, Settlement"),                      // 15
    fixed(4, "Date, Conversion"),                      // 16
    fixed(4, "Date, Capture"),                         // 17
    fixed(4, "Merchant Type"),                         // 18
    fixed(3, "Acquiring Institution Country Code"),    // 19
    fixed(3, "PAN Country Code"),                      // 20
    fixed(3, "Forwarding Institution Country Code"),   // 21
    fixed(3, "Point-of-Service Entry Mode"),           // 22
    fixed(3, "PAN Sequence Number"),                   // 23
    fixed(3, "Network International ID (NII)"),        // 24
    fixed(2, "Point-of-Service Condition Code"),       // 25
    fixed(2, "Point-of-Service Capture Code"),         // 26
    fixed(1, "Authorizing ID Response Length"),        // 27
    fixed(9, "Amount, Transaction Fee"),               // 28
    fixed(9, "Amount, Settlement Fee"),                // 29
    fixed(9, "Amount, Transaction Processing Fee"),    // 30
    fixed(9, "Amount, Settlement Processing Fee"),     // 31
    llvar(11, "Acquiring Institution ID Code"),        // 32
    llvar(11, "Forwarding Institution ID Code"),       // 33
    llvar(28, "Primary Account Number, Extended"),     // 34
    llvar(37, "Track 2 Data"),                         // 35
    lllvar(104, "Track 3 Data"),                       // 36
    fixed(12, "Retrieval Reference Number"),           // 37
    fixed(6, "Authorization ID Response"),             // 38
    fixed(2, "Response Code"),                         // 39
    fixed(3, "Service Restriction Code"),              // 40
    fixed(8, "Card Acceptor Terminal ID"),             // 41
    fixed(15, "Card Acceptor ID Code"),                // 42
    fixed(40, "Card Acceptor Name/Location"),          // 43
    llvar(25, "Additional Response Data"),             // 44
    llvar(76, "Track 1 Data"),                         // 45
    lllvar(999, "Additional Data - ISO"),              // 46
    lllvar(999, "Additional Data - National"),         // 47
    lllvar(999, "Additional Data - Private"),          // 48
    fixed(3, "Currency Code, Transaction"),            // 49
    fixed(3, "Currency Code, Settlement"),             // 50
    fixed(3, "Currency Code, Cardholder Billing"),     // 51
    fixed(16, "PIN"),                                  // 52
    fixed(16, "Security-Related Control Information"), // 53
    lllvar(240, "Additional Amounts"),                 // 54
    lllvar(510, "ICC data"),                           // 55
    lllvar(999, "Reserved ISO"),                       // 56
    lllvar(999, "Reserved National"),                  // 57
    lllvar(999, "Reserved National"),                  // 58
    lllvar(999, "Reserved National"),                  // 59
    lllvar(999, "Reserved National"),                  // 60
    lllvar(999, "Reserved Private"),                   // 61
    lllvar(999, "Reserved Private"),                   // 62
    lllvar(999, "Reserved Private"),                   // 63
    fixed(16, "MAC"),                                  // 64
    fixed(16, "Bitmap, Extended"),                     // 65
    fixed(1, "Settlement Code"),                       // 66
    fixed(2, "Extended Payment Code"),                 // 67
    fixed(3, "Receiving Institution Country Code"),    // 68
    fixed(3, "Settlement Institution Country Code"),   // 69
    fixed(3, "Network Management Information Code"),   // 70
    fixed(4, "Message Number"),                        // 71
    fixed(4, "Message Number, Last"),                  // 72
    fixed(6, "Date, Action"),                          // 73
    fixed(10, "Credits, Number"),                      // 74
    fixed(10, "Credits, Reversal Number"),             // 75
    fixed(10, "Debits, Number"),                       // 76
    fixed(10, "Debits, Reversal Number"),              // 77
    fixed(10, "Transfer, Number"),                     // 78
    fixed(10, "Transfer, Reversal Number"),            // 79
    fixed(10, "Inquiries, Number"),                    // 80
    fixed(10, "Authorizations, Number"),               // 81
    fixed(12, "Credits, Processing Fee Amount"),       // 82
    fixed(12, "Credits, Transaction Fee Amount"),      // 83
    fixed(12, "Debits, Processing Fee Amount"),        // 84
    fixed(12, "Debits, Transaction Fee Amount"),       // 85
    fixed(16, "Credits, Amount"),                      // 86
    fixed(16, "Credits, Reversal Amount"),             // 87
    fixed(16, "Debits, Amount"),                       // 88
    fixed(16, "Debits, Reversal Amount"),              // 89
    fixed(42, "Original Data Elements"),               // 90
    fixed(1, "File Update Code"),                      // 91
    fixed(2, "File Security Code"),                    // 92
    fixed(5, "Response Indicator"),                    // 93
    fixed(7, "Service Indicator"),                     // 94
    fixed(42, "Replacement Amounts"),                  // 95
    fixed(16, "Message Security Code"),                // 96
    fixed(17, "Amount, Net Settlement"),               // 97
    fixed(25, "Payee"),                                // 98
    llvar(11, "Settlement Institution ID Code"),       // 99
    llvar(11, "Receiving Institution ID Code"),        // 100
    llvar(17, "File Name"),                            // 101
    llvar(28, "Account ID 1"),                         // 102
    llvar(28, "Account ID 2"),                         // 103
    lllvar(100, "Transaction Description"),            // 104
    lllvar(999, "Reserved for ISO Use"),               // 105
    lllvar(999, "Reserved for ISO Use"),               // 106
    lllvar(999, "Reserved for ISO Use"),               // 107
    lllvar(999, "Reserved for ISO Use"),               // 108
    lllvar(999, "Reserved for ISO Use"),               // 109
    lllvar(999, "Reserved for ISO Use"),               // 110
    lllvar(999, "Reserved for ISO Use"),               // 111
    lllvar(999, "Reserved for National Use"),          // 112
    lllvar(999, "Reserved for National Use"),          // 113
    lllvar(999, "Reserved for National Use"),          // 114
    lllvar(999, "Reserved for National Use"),          // 115
    lllvar(999, "Reserved for National Use"),          // 116
    lllvar(999, "Reserved for National Use"),          // 117
    lllvar(999, "Reserved for National Use"),          // 118
    lllvar(999, "Reserved for National Use"),          // 119
    lllvar(999, "Reserved for Private Use"),           // 120
    lllvar(999, "Reserved for Private Use"),           // 121
    lllvar(999, "Reserved for Private Use"),           // 122
    lllvar(999, "Reserved for Private Use"),           // 123
    lllvar(999, "Reserved for Private Use"),           // 124
    lllvar(999, "Reserved for Private Use"),           // 125
    lllvar(999, "Reserved for Private Use"),           // 126
    lllvar(999, "Reserved for Private Use"),           // 127
    fixed(16, "MAC"),                                  // 128
];

/// A fixed field of `len` bytes.
const fn fixed(len: u16, name: &'static str) -> FieldSpec {
    FieldSpec {
        len_prefix_digits: 0,
        len_max: len,
        name,
    }
}

/// A variable field with a 2-digit length prefix (LLVAR), at most `len_max` bytes.
const fn llvar(len_max: u16, name: &'static str) -> FieldSpec {
    FieldSpec {
        len_prefix_digits: 2,
        len_max,
        name,
    }
}

/// A variable field with a 3-digit length prefix (LLLVAR), at most `len_max` bytes.
const fn lllvar(len_max: u16, name: &'static str) -> FieldSpec {
    FieldSpec {
        len_prefix_digits: 3,
        len_max,
        name,
    }
}

/// The spec of field `number` (1..=128), or `None`.
pub fn field_spec(number: u8) -> Option<&'static FieldSpec> {
    FIELDS.get(usize::from(number).checked_sub(1)?)
}

/// Why bytes are not a `default_ascii` message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("the message ends inside the MTI ({len} bytes, expecting {MTI_BYTES})")]
    ShortMti { len: usize },
    #[error("the MTI {mti:?} is not four ASCII digits")]
    BadMti { mti: Vec<u8> },
    #[error("the message ends inside the {which} bitmap")]
    ShortBitmap { which: &'static str },
    #[error("the {which} bitmap is not 16 ASCII hex digits")]
    BadBitmap { which: &'static str },
    #[error("bit 65 announces a tertiary bitmap, which this switch does not take")]
    TertiaryBitmap,
    #[error("the bitmap announces field {field}, but the message ends inside its length prefix")]
    ShortLengthPrefix { field: u8 },
    #[error("field {field}'s length prefix is not ASCII digits")]
    BadLengthPrefix { field: u8 },
    #[error("field {field} is {len} bytes long, above its maximum of {max}")]
    FieldTooLong { field: u8, len: usize, max: u16 },
    #[error("the bitmap announces field {field} ({len} bytes), but only {left} bytes are left")]
    AbsentField { field: u8, len: usize, left: usize },
    #[error("field {field} holds a byte that is not ASCII")]
    NonAscii { field: u8 },
    #[error("{extra} bytes follow the last field")]
    TrailingBytes { extra: usize },
}

/// Why a message cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("field {field} is not in the table (1 and 65 are bitmaps; at most 128)")]
    NoSuchField { field: u8 },
    #[error("field {field} is fixed at {expected} bytes, but holds {len}")]
    FixedLength {
        field: u8,
        len: usize,
        expected: u16,
    },
    #[error("field {field} holds {len} bytes, above its maximum of {max}")]
    TooLong { field: u8, len: usize, max: u16 },
    #[error("field {field} holds a byte that is not ASCII")]
    NonAscii { field: u8 },
    #[error("the MTI {mti:?} is not four ASCII digits")]
    BadMti { mti: [u8; MTI_BYTES] },
}

/// Field bytes reserved up front for a message built field by field.
const MESSAGE_DATA_BYTES_INITIAL: usize = 160;
/// Fields reserved up front (a payment message has about a dozen).
const MESSAGE_FIELDS_INITIAL: usize = 16;

/// A decoded message: the MTI and the data fields present. The values live back to
/// back in one buffer, so that a message costs two allocations, not one per field.
#[derive(Debug, Clone, Default)]
pub struct Message {
    pub mti: [u8; MTI_BYTES],
    /// Every value set, in the order set (a replaced value stays, unreferenced).
    data: Vec<u8>,
    /// `(field, start, end)` of each present field's value in `data`, sorted by field.
    index: Vec<(u8, u32, u32)>,
}

impl PartialEq for Message {
    /// Equal when the MTI and every field's value are equal, however they were built.
    fn eq(&self, other: &Message) -> bool {
        self.mti == other.mti && self.fields().eq(other.fields())
    }
}

impl Eq for Message {}

impl Message {
    /// An empty message of type `mti` (e.g. `*b"0200"`).
    pub fn new(mti: [u8; MTI_BYTES]) -> Message {
        Message {
            mti,
            data: Vec::with_capacity(MESSAGE_DATA_BYTES_INITIAL),
            index: Vec::with_capacity(MESSAGE_FIELDS_INITIAL),
        }
    }

    /// The value of field `number`, if present.
    pub fn get(&self, number: u8) -> Option<&[u8]> {
        let at = self
            .index
            .binary_search_by_key(&number, |(field, _, _)| *field)
            .ok()?;
        let (_, start, end) = self.index[at];
        self.data.get(start as usize..end as usize)
    }

    /// Sets field `number`, replacing any value it had.
    pub fn set(&mut self, number: u8, value: impl AsRef<[u8]>) {
        let start = self.data.len() as u32;
        self.data.extend_from_slice(value.as_ref());
        let span = (number, start, self.data.len() as u32);
        match self
            .index
            .binary_search_by_key(&number, |(field, _, _)| *field)
        {
            Ok(at) => self.index[at] = span,
            Err(at) => self.index.insert(at, span),
        }
    }

    /// The fields present, in field order.
    pub fn fields(&self) -> impl Iterator<Item = (u8, &[u8])> {
        self.index
            .iter()
            .map(|&(field, start, end)| (field, &self.data[start as usize..end as usize]))
    }

    /// Copies field `number` from `other` when it is present there.
    pub fn echo(&mut self, other: &Message, number: u8) {
        if let Some(value) = other.get(number) {
            self.set(number, value);
        }
    }

    /// The MTI as text (always ASCII digits once decoded).
    pub fn mti_str(&self) -> &str {
        std::str::from_utf8(&self.mti).unwrap_or("????")
    }
}

/// Decodes one message (the frame's body, without the length prefix).
pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
    let (message, error) = decode_partial(bytes)?;
    match error {
        None => Ok(message),
        Some(error) => Err(error),
    }
}

/// Decodes as much as possible: `Err` when not even the MTI is valid, else the message
/// with the fields decoded before the first error, and that error if there was one.
pub fn decode_partial(bytes: &[u8]) -> Result<(Message, Option<DecodeError>), DecodeError> {
    let Some(mti) = bytes.get(..MTI_BYTES) else {
        return Err(DecodeError::ShortMti { len: bytes.len() });
    };
    if !mti.iter().all(u8::is_ascii_digit) {
        return Err(DecodeError::BadMti { mti: mti.to_vec() });
    }
    let mut message = Message::new([mti[0], mti[1], mti[2], mti[3]]);
    let error = decode_fields(bytes, MTI_BYTES, &mut message).err();
    Ok((message, error))
}

/// Decodes the bitmaps from `at` and then every field they announce into `message`.
fn decode_fields(bytes: &[u8], at: usize, message: &mut Message) -> Result<(), DecodeError> {
    let (primary, mut at) = decode_bitmap(bytes, at, "primary")?;
    let mut bitmap = u128::from(primary) << 64;
    if bit_set(bitmap, FIELD_SECONDARY_BITMAP) {
        let (secondary, next) = decode_bitmap(bytes, at, "secondary")?;
        bitmap |= u128::from(secondary);
        at = next;
    }
    if bit_set(bitmap, FIELD_TERTIARY_BITMAP) {
        return Err(DecodeError::TertiaryBitmap);
    }
    for field in 2..=FIELD_NUMBER_MAX {
        if bit_set(bitmap, field) {
            at = decode_field(bytes, at, field, message)?;
        }
    }
    match bytes.len() - at {
        0 => Ok(()),
        extra => Err(DecodeError::TrailingBytes { extra }),
    }
}

/// Whether `bitmap` (field 1 is the most significant bit) has field `field` set.
fn bit_set(bitmap: u128, field: u8) -> bool {
    debug_assert!((1..=FIELD_NUMBER_MAX).contains(&field));
    bitmap & (1u128 << (u32::from(FIELD_NUMBER_MAX) - u32::from(field))) != 0
}

fn decode_bitmap(
    bytes: &[u8],
    at: usize,
    which: &'static str,
) -> Result<(u64, usize), DecodeError> {
    let end = at + BITMAP_HEX_BYTES;
    let hex = bytes
        .get(at..end)
        .ok_or(DecodeError::ShortBitmap { which })?;
    let mut value = 0u64;
    for &digit in hex {
        let nibble = (digit as char)
            .to_digit(16)
            .ok_or(DecodeError::BadBitmap { which })?;
        value = value << 4 | u64::from(nibble);
    }
    Ok((value, end))
}

fn decode_field(
    bytes: &[u8],
    at: usize,
    field: u8,
    message: &mut Message,
) -> Result<usize, DecodeError> {
    let Some(spec) = field_spec(field) else {
        unreachable!("fields 1..=128 are all in the table");
    };
    let digits = usize::from(spec.len_prefix_digits);
    let (len, at) = if digits == 0 {
        (usize::from(spec.len_max), at)
    } else {
        let prefix = bytes
            .get(at..at + digits)
            .ok_or(DecodeError::ShortLengthPrefix { field })?;
        let mut len = 0usize;
        for &digit in prefix {
            if !digit.is_ascii_digit() {
                return Err(DecodeError::BadLengthPrefix { field });
            }
            len = len * 10 + usize::from(digit - b'0');
        }
        if len > usize::from(spec.len_max) {
            return Err(DecodeError::FieldTooLong {
                field,
                len,
                max: spec.len_max,
            });
        }
        (len, at + digits)
    };
    let left = bytes.len().saturating_sub(at);
    let value = bytes
        .get(at..at + len)
        .ok_or(DecodeError::AbsentField { field, len, left })?;
    if !value.is_ascii() {
        return Err(DecodeError::NonAscii { field });
    }
    // Fields are decoded in ascending order, so appending keeps the index sorted.
    message.set(field, value);
    Ok(at + len)
}

/// Encodes `message` and appends it to `out` (without the length prefix). Nothing is
/// appended when it fails.
pub fn encode(message: &Message, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    if !message.mti.iter().all(u8::is_ascii_digit) {
        return Err(EncodeError::BadMti { mti: message.mti });
    }
    let mut bitmap = 0u128;
    for (field, value) in message.fields() {
        check_field(field, value)?;
        bitmap |= 1u128 << (u32::from(FIELD_NUMBER_MAX) - u32::from(field));
    }
    let secondary = bitmap as u64;
    if secondary != 0 {
        bitmap |= 1u128 << (u32::from(FIELD_NUMBER_MAX) - u32::from(FIELD_SECONDARY_BITMAP));
    }
    out.extend_from_slice(&message.mti);
    push_hex(out, (bitmap >> 64) as u64);
    if secondary != 0 {
        push_hex(out, secondary);
    }
    for (field, value) in message.fields() {
        let Some(spec) = field_spec(field) else {
            unreachable!("check_field accepted it");
        };
        let digits = u32::from(spec.len_prefix_digits);
        if digits > 0 {
            let text = format!("{:0width$}", value.len(), width = digits as usize);
            out.extend_from_slice(text.as_bytes());
        }
        out.extend_from_slice(value);
    }
    Ok(())
}

fn check_field(field: u8, value: &[u8]) -> Result<(), EncodeError> {
    let spec = match field_spec(field) {
        Some(spec) if field != FIELD_SECONDARY_BITMAP && field != FIELD_TERTIARY_BITMAP => spec,
        _ => return Err(EncodeError::NoSuchField { field }),
    };
    let len = value.len();
    if spec.len_prefix_digits == 0 && len != usize::from(spec.len_max) {
        return Err(EncodeError::FixedLength {
            field,
            len,
            expected: spec.len_max,
        });
    }
    if len > usize::from(spec.len_max) {
        return Err(EncodeError::TooLong {
            field,
            len,
            max: spec.len_max,
        });
    }
    if !value.is_ascii() {
        return Err(EncodeError::NonAscii { field });
    }
    Ok(())
}

fn push_hex(out: &mut Vec<u8>, value: u64) {
    const HEX_DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    for shift in (0..16).rev() {
        out.push(HEX_DIGITS[((value >> (shift * 4)) & 0xF) as usize]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 0200 as pyiso8583 4.0.1 encodes it with `default_ascii` (fields 2, 3, 4, 7, 11,
    /// 12, 13, 37, 41, 42, 49), captured from `iso8583.encode`.
    const PYISO8583_0200: &[u8] = b"02007238000008C0800016411111111111111100000000000000100012041615000000011615001204000000000001TERM0001000000000000042840";

    /// A 0420 with field 90 (so a secondary bitmap), captured the same way.
    const PYISO8583_0420: &[u8] = b"0420F220000000C0800000000040000000001641111111111111110000000000000010001204161600000002TERM0001000000000000042840020000000112041615000000000000000000000000";

    // A message as pyiso8583 4.0.1 encodes it with default_ascii (captured from
    // `iso8583.encode`): the codec decodes it field by field and re-encodes it byte for byte.
    #[test]
    fn matches_pyiso8583_bytes() {
        let wire = PYISO8583_0200;
        let message = decode(wire).expect("pyiso8583's bytes decode");
        assert_eq!(&message.mti, b"0200");
        assert_eq!(message.get(2), Some(&b"4111111111111111"[..]));
        assert_eq!(message.get(4), Some(&b"000000001000"[..]));
        assert_eq!(message.get(11), Some(&b"000001"[..]));
        assert_eq!(message.get(90), None);
        let mut out = Vec::new();
        encode(&message, &mut out).expect("encodes");
        assert_eq!(out, wire);
    }

    // A message with a secondary-bitmap field (90) round-trips with bit 1 set.
    #[test]
    fn secondary_bitmap_round_trip() {
        let wire = PYISO8583_0420;
        let message = decode(wire).expect("decodes");
        assert_eq!(message.get(90).map(<[u8]>::len), Some(42));
        let mut out = Vec::new();
        encode(&message, &mut out).expect("encodes");
        assert_eq!(out, wire);
    }

    // Each way a frame can be wrong is reported as its own error, never a panic.
    #[test]
    fn rejects_each_defect() {
        assert!(matches!(
            decode(b"02"),
            Err(DecodeError::ShortMti { len: 2 })
        ));
        assert!(matches!(decode(b"02x0"), Err(DecodeError::BadMti { .. })));
        assert!(matches!(
            decode(b"0800ZZ00000000000000"),
            Err(DecodeError::BadBitmap { .. })
        ));
        assert!(matches!(
            decode(b"08002000000000000000"),
            Err(DecodeError::AbsentField { field: 3, .. })
        ));
        assert!(matches!(
            decode(b"08000000000000000000x"),
            Err(DecodeError::TrailingBytes { extra: 1 })
        ));
        assert!(matches!(
            decode(b"080040000000000000002x"),
            Err(DecodeError::BadLengthPrefix { field: 2 })
        ));
        assert!(matches!(
            decode(b"0800400000000000000020"),
            Err(DecodeError::FieldTooLong {
                field: 2,
                len: 20,
                ..
            })
        ));
        assert!(matches!(
            decode(b"08008000000000000000800000000000000000000000000000000000"),
            Err(DecodeError::TertiaryBitmap)
        ));
        let (partial, error) = decode_partial(b"02000020000000000000012").expect("MTI is fine");
        assert_eq!(partial.get(11), None);
        assert!(matches!(
            error,
            Some(DecodeError::AbsentField { field: 11, .. })
        ));
    }
}
