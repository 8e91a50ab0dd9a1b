//! Property tests of the switch's ISO 8583 codec (`tools/src/switch/codec.rs`): any
//! message built from the spec table survives an encode/decode round trip, and any
//! byte string decodes to a message or an error, never a panic.

#[path = "../src/switch/codec.rs"]
#[allow(dead_code)]
mod codec;

use codec::{decode, decode_partial, encode, field_spec, Message, FIELD_NUMBER_MAX};
use proptest::prelude::*;

/// One field's number and a value that fits its spec: exactly `len_max` ASCII bytes
/// for a fixed field, up to `len_max` for a variable one.
fn field() -> impl Strategy<Value = (u8, Vec<u8>)> {
    (2..=FIELD_NUMBER_MAX)
        .prop_filter("65 announces a tertiary bitmap", |&number| number != 65)
        .prop_flat_map(|number| {
            let spec = field_spec(number).expect("2..=128 are in the table");
            let max = usize::from(spec.len_max);
            let len = if spec.len_prefix_digits == 0 {
                max..=max
            } else {
                0..=max
            };
            (Just(number), proptest::collection::vec(0x20u8..0x7f, len))
        })
}

fn message() -> impl Strategy<Value = Message> {
    let mti = proptest::array::uniform4(b'0'..=b'9');
    (mti, proptest::collection::vec(field(), 0..12)).prop_map(|(mti, fields)| {
        let mut message = Message::new(mti);
        for (number, value) in fields {
            message.set(number, value);
        }
        message
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    // Encoding a valid message and decoding the bytes gives back the same message, and
    // re-encoding gives the same bytes.
    #[test]
    fn round_trip(message in message()) {
        let mut wire = Vec::new();
        encode(&message, &mut wire).expect("a message built from the table encodes");
        let decoded = decode(&wire).expect("encoded bytes decode");
        prop_assert_eq!(&decoded, &message);
        let mut again = Vec::new();
        encode(&decoded, &mut again).expect("re-encodes");
        prop_assert_eq!(again, wire);
    }

    // Arbitrary bytes never panic the decoder; whatever it accepts re-encodes into bytes
    // that decode to the same message.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = decode_partial(&bytes);
        if let Ok(message) = decode(&bytes) {
            let mut wire = Vec::new();
            encode(&message, &mut wire).expect("a decoded message re-encodes");
            prop_assert_eq!(decode(&wire), Ok(message));
        }
    }

    // Bytes that start like a real message (a valid MTI and bitmap, then noise) reach
    // the field decoder, and still never panic.
    #[test]
    fn noisy_fields_never_panic(
        bitmap in any::<u64>(),
        secondary in any::<u64>(),
        tail in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let mut bytes = format!("0200{bitmap:016X}{secondary:016X}").into_bytes();
        bytes.extend_from_slice(&tail);
        let _ = decode_partial(&bytes);
    }
}
