//! Bad bytes into a live transport's socket: arbitrary bytes, truncated frames,
//! oversized lengths and bit-flipped valid frames, before and after the handshake. For
//! every case the transport closes the connection and the counter of exactly the reason
//! the pure reader predicts rises by one; nothing panics (the transport keeps serving).
//!
//! `TRANSPORT_LIVE_FUZZ_CASES` raises the case count (default 150).

mod transport_support;

use std::io::Write;
use std::net::TcpStream;

use proptest::collection::vec;
use proptest::prelude::*;
use transport_support::*;
use tricommit_engine::proto::SiteId;
use tricommit_engine::transport::auth::{fresh_nonce, MacKey, MAC_BYTES};
use tricommit_engine::transport::frame::{
    kind, role, seal_frame, Expect, FrameReader, Header, Hello, HEADER_BYTES, HELLO_BODY_BYTES,
};
use tricommit_engine::transport::{RejectReason, Transport, TransportStats, FRAME_BODY_BYTES_MAX};

fn cases() -> u32 {
    std::env::var("TRANSPORT_LIVE_FUZZ_CASES")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(150)
}

/// How a valid frame is damaged.
#[derive(Clone, Debug)]
enum Damage {
    /// Replaced by arbitrary bytes.
    Arbitrary(Vec<u8>),
    /// Cut after this many bytes (modulo its length).
    Truncate(usize),
    /// Its length field set above the limit.
    Oversize(u32),
    /// One bit flipped (modulo its length in bits).
    FlipBit(usize),
}

fn arb_damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        vec(any::<u8>(), 1..200).prop_map(Damage::Arbitrary),
        any::<usize>().prop_map(Damage::Truncate),
        (FRAME_BODY_BYTES_MAX as u32 + 1..).prop_map(Damage::Oversize),
        any::<usize>().prop_map(Damage::FlipBit),
    ]
}

fn apply(damage: &Damage, mut frame: Vec<u8>) -> Vec<u8> {
    match damage {
        Damage::Arbitrary(bytes) => bytes.clone(),
        Damage::Truncate(cut) => {
            frame.truncate(cut % frame.len());
            frame
        }
        Damage::Oversize(length) => {
            frame[8..12].copy_from_slice(&length.to_le_bytes());
            frame
        }
        Damage::FlipBit(bit) => {
            let bit = bit % (frame.len() * 8);
            frame[bit / 8] ^= 1 << (bit % 8);
            frame
        }
    }
}

fn site0_hello() -> Vec<u8> {
    let header = Header {
        kind: kind::HELLO,
        body_len: 0,
        sender: 0,
        receiver: 1,
        cluster_id: CLUSTER_ID,
        sequence: 0,
    };
    let hello = Hello {
        role: role::SITE,
        nonce: fresh_nonce().expect("nonce"),
    };
    let mut bytes = Vec::new();
    seal_frame(
        &mut bytes,
        &MacKey::hello(&SECRET, CLUSTER_ID),
        header,
        |body| hello.encode(body),
    )
    .expect("hello");
    bytes
}

/// The reason the transport must give for `bytes` as the first bytes of a connection:
/// the pure reader's verdict, then the hello checks, and a handshake timeout when the
/// reader waits for more.
fn predict_first(bytes: &[u8]) -> RejectReason {
    let mut reader = FrameReader::new();
    reader.buffer_mut().extend_from_slice(bytes);
    let expect = Expect {
        cluster_id: CLUSTER_ID,
        receiver: 1,
        receiver_any_ok: false,
        sender: None,
        sequence: 0,
        body_bytes_max: HELLO_BODY_BYTES,
    };
    match reader.next_frame(&expect, &MacKey::hello(&SECRET, CLUSTER_ID)) {
        Err(reason) => reason,
        Ok(None) => RejectReason::HandshakeTimeout,
        Ok(Some(frame)) if frame.header.kind != kind::HELLO => RejectReason::UnexpectedKind,
        Ok(Some(frame)) => match Hello::decode(&frame.body) {
            Err(reason) => reason,
            Ok(_) => panic!("a damaged hello verified: {bytes:?}"),
        },
    }
}

/// The reason for `bytes` sent by an established site 0 as its first frame.
fn predict_session(fake: &FakeSite, bytes: &[u8]) -> Option<RejectReason> {
    let mut reader = FrameReader::new();
    reader.buffer_mut().extend_from_slice(bytes);
    let expect = Expect {
        cluster_id: CLUSTER_ID,
        receiver: 1,
        receiver_any_ok: false,
        sender: Some(0),
        sequence: 1,
        body_bytes_max: FRAME_BODY_BYTES_MAX,
    };
    match reader.next_frame(&expect, &fake.send_key) {
        Err(reason) => Some(reason),
        Ok(None) => None,
        Ok(Some(_)) => panic!("a damaged frame verified: {bytes:?}"),
    }
}

/// Waits until the counter of `reason` rose by one over `before`, and no other moved.
fn assert_counted(stats: &TransportStats, before: &[u64], reason: RejectReason) {
    let expected = |r: RejectReason| before[r as usize] + u64::from(r == reason);
    wait_until("the reject counter", || {
        stats.rejects(reason) == expected(reason)
    });
    for other in RejectReason::ALL {
        assert_eq!(
            stats.rejects(other),
            expected(other),
            "{other:?} (expected {reason:?})"
        );
    }
}

fn counters(stats: &TransportStats) -> Vec<u64> {
    RejectReason::ALL
        .iter()
        .map(|r| stats.rejects(*r))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    // Proves that damaged first frames close the connection with the predicted reason.
    #[test]
    fn damaged_first_frames_close_with_their_reason(damage in arb_damage()) {
        let transport = shared_transport(Serves::FirstFrames);
        let stats = transport.stats();
        let before = counters(&stats);
        let bytes = apply(&damage, site0_hello());
        let reason = predict_first(&bytes);
        let mut stream = TcpStream::connect(transport.local_addr()).expect("dial");
        let _ = stream.write_all(&bytes);
        prop_assert!(closed_by_peer(&mut stream), "{damage:?} left the connection open");
        assert_counted(&stats, &before, reason);
    }

    // Proves that damaged frames after a good handshake close the link with the
    // predicted reason (a frame cut short, or given a longer length, is completed with zeros).
    #[test]
    fn damaged_session_frames_close_with_their_reason(damage in arb_damage()) {
        let transport = shared_transport(Serves::SessionFrames);
        let stats = transport.stats();
        let mut fake = FakeSite::handshake(transport.local_addr(), 0, 1, &SECRET);
        wait_until("the link", || stats.link_up(SiteId(0)));
        let before = counters(&stats);
        let mut bytes = apply(&damage, fake.site_frame(&[forget(9)]));
        // While the reader would wait for more (a cut frame, a longer length), complete
        // the frame with zeros, as a sender that goes on would: then it must end.
        let mut reason = predict_session(&fake, &bytes);
        while reason.is_none() {
            let needed = if bytes.len() < HEADER_BYTES {
                HEADER_BYTES
            } else {
                let body_len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
                HEADER_BYTES + body_len as usize + MAC_BYTES
            };
            bytes.resize(needed.max(bytes.len() + 1), 0);
            reason = predict_session(&fake, &bytes);
        }
        let reason = reason.expect("the loop ends with a reason");
        fake.write(&bytes);
        prop_assert!(fake.closed_by_peer(), "{damage:?} left the connection open");
        assert_counted(&stats, &before, reason);
    }
}

/// Which test a shared transport serves: each test has its own, so that the tests can
/// run in parallel without moving each other's counters.
#[derive(Clone, Copy)]
enum Serves {
    FirstFrames = 0,
    SessionFrames = 1,
}

/// One transport serves every case of a test (site 1 of two; site 0 is played by the
/// cases), with short timers so a handshake timeout costs little.
fn shared_transport(serves: Serves) -> &'static Transport {
    use std::sync::{Mutex, OnceLock};
    use tricommit_engine::pipeline::mpsc::MpscReceiver;
    use tricommit_engine::transport::Frame;
    type Served = (Transport, Mutex<MpscReceiver<Frame>>);
    static TRANSPORTS: [OnceLock<Served>; 2] = [OnceLock::new(), OnceLock::new()];
    let (transport, _inbox) = TRANSPORTS[serves as usize].get_or_init(|| {
        let addrs = [free_addr(), free_addr()];
        let mut config = config(1, &addrs);
        // A handshake timeout ends a first-frame case that waits for more bytes; a
        // session case must never be cut by the silence bound, whatever the load.
        let (heartbeat_interval_ms, peer_silent_ms_max) = match serves {
            Serves::FirstFrames => (50, 150),
            Serves::SessionFrames => (50, 5_000),
        };
        config.heartbeat_interval_ms = heartbeat_interval_ms;
        config.peer_silent_ms_max = peer_silent_ms_max;
        let (sender, receiver) = inbox();
        let transport = Transport::start(config, sender).expect("start site 1");
        (transport, Mutex::new(receiver))
    });
    transport
}
