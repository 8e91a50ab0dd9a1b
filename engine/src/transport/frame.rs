//! Frames on the wire: `header (32 bytes) | body | mac (16 bytes)`.
//!
//! ```text
//! offset size field
//!      0    4 magic       u32 = FRAME_MAGIC ("TCMT" in ASCII, little-endian)
//!      4    2 version     u16 = FRAME_VERSION
//!      6    1 kind        u8  (kind::*)
//!      7    1 flags       u8  = 0
//!      8    4 body_len    u32 ≤ FRAME_BODY_BYTES_MAX
//!     12    2 sender      u16 (a site id, or CLIENT_ID for a network client)
//!     14    2 receiver    u16 (a site id, or ANY_RECEIVER in a client's hello)
//!     16    8 cluster_id  u64
//!     24    8 sequence    u64 (0 for the hello, then 1, 2, … per direction)
//!     32    n body
//!   32+n   16 mac         over bytes 0 .. 32+n
//! ```
//!
//! Reading is defensive and in a fixed order ([`FrameReader::next_frame`]): the header's
//! fixed fields and bounds first (a hello's body must be exactly a hello's size) (before waiting for a body that may never come), then
//! the MAC, and only then the body is handed to the codec. Any failure is a
//! [`RejectReason`]: the connection closes and the reason's counter rises. Nothing in
//! this module does I/O; `tcp.rs` feeds it the bytes it read.

use bytes::{Buf, Bytes, BytesMut};

use super::auth::{MacKey, MAC_BYTES, NONCE_BYTES};

/// The first four bytes of every frame: "TCMT".
pub const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"TCMT");
/// The wire version this build speaks; a peer with another one is refused.
pub const FRAME_VERSION: u16 = 1;
/// Bytes of the fixed header.
pub const HEADER_BYTES: usize = 32;
/// The largest body a frame may carry: room for a PREPARE of a full batch
/// (`BATCH_TXNS_MAX` transactions: 48 bytes each for descriptor and operation).
pub const FRAME_BODY_BYTES_MAX: usize = 4 << 20;
/// The largest frame on the wire.
pub const FRAME_BYTES_MAX: usize = HEADER_BYTES + FRAME_BODY_BYTES_MAX + MAC_BYTES;
/// The `sender` of every frame a network client sends.
pub const CLIENT_ID: u16 = 0xffff;
/// The `receiver` of a client's hello: the client does not need to know the site id of
/// the node it dials; the node's hello tells it.
pub const ANY_RECEIVER: u16 = 0xffff;

const _: () = assert!(
    FRAME_BODY_BYTES_MAX
        >= 8 + 4 + 1 + 4 + crate::proto::BATCH_TXNS_MAX * (16 + 8 + crate::proto::OP_PAYLOAD_BYTES)
);
const _: () = assert!(FRAME_BODY_BYTES_MAX <= u32::MAX as usize);

/// Frame kinds.
pub mod kind {
    /// Handshake: `role u8 | nonce [u8; 32]`, MACed with the hello key, sequence 0.
    pub const HELLO: u8 = 1;
    /// Site to site: protocol parts (`codec::encode_parts`).
    pub const SITE: u8 = 2;
    /// Keep-alive: empty body. Any frame counts as a sign of life.
    pub const HEARTBEAT: u8 = 3;
    /// Client to node: `codec::encode_submit`.
    pub const SUBMIT: u8 = 4;
    /// Node to client: `codec::encode_outcomes`.
    pub const OUTCOMES: u8 = 5;
    /// Node to client: `codec::encode_busy`.
    pub const BUSY: u8 = 6;
    /// Client to participant node: `balances::encode_query`, one page of its ledger's
    /// balances.
    pub const BALANCES_QUERY: u8 = 7;
    /// Participant node to client: `balances::encode_page`.
    pub const BALANCES: u8 = 8;
    /// The highest kind this version knows.
    pub const MAX: u8 = BALANCES;
}

/// Why a frame (and so its connection) was refused. The counters in
/// [`TransportStats`](super::TransportStats) are indexed by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RejectReason {
    /// The first four bytes are not [`FRAME_MAGIC`].
    BadMagic = 0,
    /// Another wire version.
    BadVersion,
    /// A kind this version does not know, or flags that are not zero.
    BadKind,
    /// `body_len` is above [`FRAME_BODY_BYTES_MAX`].
    Oversized,
    /// Another cluster's frame.
    BadCluster,
    /// The receiver is not this end.
    WrongReceiver,
    /// The sender is not the peer of this connection, or not a site of the cluster, or
    /// a site that should have been dialed by this end instead.
    BadSender,
    /// The sequence number is not the next one (a replay, a drop or a reorder).
    BadSequence,
    /// The MAC does not verify: a peer without the key, a frame from another
    /// connection, or damage.
    BadMac,
    /// The body does not decode.
    BadBody,
    /// A kind that is not allowed at this point (a second hello, a client sending site
    /// parts, a site submitting transactions).
    UnexpectedKind,
    /// The connection limit was reached; the connection was closed unread.
    ConnectionLimit,
    /// No handshake within the allowed time.
    HandshakeTimeout,
    /// A client's hello while this replica is in a minority: it could commit nothing
    /// (`TransportConfig::replicas`), so its clients go to another replica.
    Minority,
}

impl RejectReason {
    /// How many reasons there are (the length of the counter array).
    pub const COUNT: usize = 14;
    /// Every reason, in counter order.
    pub const ALL: [RejectReason; RejectReason::COUNT] = [
        RejectReason::BadMagic,
        RejectReason::BadVersion,
        RejectReason::BadKind,
        RejectReason::Oversized,
        RejectReason::BadCluster,
        RejectReason::WrongReceiver,
        RejectReason::BadSender,
        RejectReason::BadSequence,
        RejectReason::BadMac,
        RejectReason::BadBody,
        RejectReason::UnexpectedKind,
        RejectReason::ConnectionLimit,
        RejectReason::HandshakeTimeout,
        RejectReason::Minority,
    ];

    /// A stable snake_case name, for metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            RejectReason::BadMagic => "bad_magic",
            RejectReason::BadVersion => "bad_version",
            RejectReason::BadKind => "bad_kind",
            RejectReason::Oversized => "oversized",
            RejectReason::BadCluster => "bad_cluster",
            RejectReason::WrongReceiver => "wrong_receiver",
            RejectReason::BadSender => "bad_sender",
            RejectReason::BadSequence => "bad_sequence",
            RejectReason::BadMac => "bad_mac",
            RejectReason::BadBody => "bad_body",
            RejectReason::UnexpectedKind => "unexpected_kind",
            RejectReason::ConnectionLimit => "connection_limit",
            RejectReason::HandshakeTimeout => "handshake_timeout",
            RejectReason::Minority => "minority",
        }
    }
}

const _: () = assert!(RejectReason::Minority as usize + 1 == RejectReason::COUNT);

/// A decoded header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: u8,
    pub body_len: u32,
    pub sender: u16,
    pub receiver: u16,
    pub cluster_id: u64,
    pub sequence: u64,
}

impl Header {
    /// Writes the 32 header bytes.
    pub fn encode(&self, out: &mut [u8; HEADER_BYTES]) {
        out[0..4].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
        out[4..6].copy_from_slice(&FRAME_VERSION.to_le_bytes());
        out[6] = self.kind;
        out[7] = 0;
        out[8..12].copy_from_slice(&self.body_len.to_le_bytes());
        out[12..14].copy_from_slice(&self.sender.to_le_bytes());
        out[14..16].copy_from_slice(&self.receiver.to_le_bytes());
        out[16..24].copy_from_slice(&self.cluster_id.to_le_bytes());
        out[24..32].copy_from_slice(&self.sequence.to_le_bytes());
    }

    /// Parses and checks the context-free fields: magic, version, kind, flags, length.
    pub fn decode(bytes: &[u8; HEADER_BYTES]) -> Result<Header, RejectReason> {
        let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
        let mut word = [0u8; 8];
        if u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) != FRAME_MAGIC {
            return Err(RejectReason::BadMagic);
        }
        if u16_at(4) != FRAME_VERSION {
            return Err(RejectReason::BadVersion);
        }
        let kind = bytes[6];
        if kind == 0 || kind > kind::MAX || bytes[7] != 0 {
            return Err(RejectReason::BadKind);
        }
        let body_len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        if body_len as usize > FRAME_BODY_BYTES_MAX {
            return Err(RejectReason::Oversized);
        }
        word.copy_from_slice(&bytes[16..24]);
        let cluster_id = u64::from_le_bytes(word);
        word.copy_from_slice(&bytes[24..32]);
        let sequence = u64::from_le_bytes(word);
        Ok(Header {
            kind,
            body_len,
            sender: u16_at(12),
            receiver: u16_at(14),
            cluster_id,
            sequence,
        })
    }
}

/// Appends one sealed frame to `out`: the header, the body `encode_body` writes, and the
/// MAC over both. The body is written in place (no copy); the header is patched with
/// its length afterwards. Returns `None` (and leaves `out` as it was) when the body came
/// out larger than [`FRAME_BODY_BYTES_MAX`].
pub fn seal_frame(
    out: &mut Vec<u8>,
    key: &MacKey,
    mut header: Header,
    encode_body: impl FnOnce(&mut Vec<u8>),
) -> Option<usize> {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER_BYTES]);
    encode_body(out);
    let body_len = out.len() - start - HEADER_BYTES;
    if body_len > FRAME_BODY_BYTES_MAX {
        out.truncate(start);
        return None;
    }
    header.body_len = body_len as u32;
    let mut raw = [0u8; HEADER_BYTES];
    header.encode(&mut raw);
    out[start..start + HEADER_BYTES].copy_from_slice(&raw);
    let mac = key.mac(&out[start..]);
    out.extend_from_slice(&mac);
    Some(out.len() - start)
}

/// What the reading end expects of the next frame's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expect {
    pub cluster_id: u64,
    /// This end's id.
    pub receiver: u16,
    /// Whether [`ANY_RECEIVER`] is acceptable (only in a client's hello).
    pub receiver_any_ok: bool,
    /// The peer's id once the handshake named it; `None` while any sender may speak.
    pub sender: Option<u16>,
    /// The sequence the next frame must carry.
    pub sequence: u64,
    /// The largest body acceptable now: [`HELLO_BODY_BYTES`] before the handshake, so
    /// that a peer without the key cannot make a reader wait for (and reserve) a large
    /// body; [`FRAME_BODY_BYTES_MAX`] after it.
    pub body_bytes_max: usize,
}

/// A frame that passed every check but the body's decoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenFrame {
    pub header: Header,
    /// The body, cut from the read buffer without a copy.
    pub body: Bytes,
}

/// Cuts frames out of the bytes read from one connection.
#[derive(Debug, Default)]
pub struct FrameReader {
    buffer: BytesMut,
    /// The header of the frame whose body is still arriving, checked already.
    pending: Option<Header>,
}

impl FrameReader {
    /// An empty reader.
    pub fn new() -> FrameReader {
        FrameReader::default()
    }

    /// The buffer to read into (the caller appends the bytes it read).
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buffer
    }

    /// Bytes read and not yet cut into frames.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// The next complete frame, checked in order: header fields (magic, version, kind,
    /// length, cluster, receiver, sender, sequence), then the MAC under `key`. Returns
    /// `Ok(None)` when more bytes are needed. The caller must advance `expect.sequence`
    /// after each frame (the reader does not know which key comes next).
    pub fn next_frame(
        &mut self,
        expect: &Expect,
        key: &MacKey,
    ) -> Result<Option<OpenFrame>, RejectReason> {
        let header = match self.pending {
            Some(header) => header,
            None => {
                if self.buffer.len() < HEADER_BYTES {
                    return Ok(None);
                }
                let mut raw = [0u8; HEADER_BYTES];
                raw.copy_from_slice(&self.buffer[..HEADER_BYTES]);
                let header = Header::decode(&raw)?;
                check_context(&header, expect)?;
                self.pending = Some(header);
                header
            }
        };
        let frame_bytes = HEADER_BYTES + header.body_len as usize + MAC_BYTES;
        if self.buffer.len() < frame_bytes {
            self.buffer.reserve(frame_bytes - self.buffer.len());
            return Ok(None);
        }
        self.pending = None;
        let mut frame = self.buffer.split_to(frame_bytes).freeze();
        let signed = frame_bytes - MAC_BYTES;
        if !key.verify(&frame[..signed], &frame[signed..]) {
            return Err(RejectReason::BadMac);
        }
        frame.advance(HEADER_BYTES);
        frame.truncate(header.body_len as usize);
        Ok(Some(OpenFrame {
            header,
            body: frame,
        }))
    }
}

/// The roles a hello names.
pub mod role {
    /// A site of the cluster (coordinator replica or participant).
    pub const SITE: u8 = 1;
    /// A network client.
    pub const CLIENT: u8 = 2;
}

/// Bytes of a hello body: `role u8 | nonce [u8; 32]`.
pub const HELLO_BODY_BYTES: usize = 1 + NONCE_BYTES;

/// The body of a hello frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    pub role: u8,
    pub nonce: [u8; NONCE_BYTES],
}

impl Hello {
    /// Appends the body.
    pub fn encode(&self, body: &mut Vec<u8>) {
        body.push(self.role);
        body.extend_from_slice(&self.nonce);
    }

    /// Decodes a body; a wrong length or an unknown role is [`RejectReason::BadBody`].
    pub fn decode(body: &[u8]) -> Result<Hello, RejectReason> {
        if body.len() != HELLO_BODY_BYTES {
            return Err(RejectReason::BadBody);
        }
        let role = body[0];
        if role != role::SITE && role != role::CLIENT {
            return Err(RejectReason::BadBody);
        }
        let mut nonce = [0u8; NONCE_BYTES];
        nonce.copy_from_slice(&body[1..]);
        Ok(Hello { role, nonce })
    }
}

/// The header checks that need the connection's context.
fn check_context(header: &Header, expect: &Expect) -> Result<(), RejectReason> {
    if header.body_len as usize > expect.body_bytes_max {
        return Err(RejectReason::Oversized);
    }
    if header.cluster_id != expect.cluster_id {
        return Err(RejectReason::BadCluster);
    }
    let any = expect.receiver_any_ok && header.receiver == ANY_RECEIVER;
    if header.receiver != expect.receiver && !any {
        return Err(RejectReason::WrongReceiver);
    }
    if expect.sender.is_some_and(|sender| sender != header.sender) {
        return Err(RejectReason::BadSender);
    }
    if header.sequence != expect.sequence {
        return Err(RejectReason::BadSequence);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: u8, sequence: u64) -> Header {
        Header {
            kind,
            body_len: 0,
            sender: 1,
            receiver: 2,
            cluster_id: 77,
            sequence,
        }
    }

    fn expect(sequence: u64) -> Expect {
        Expect {
            cluster_id: 77,
            receiver: 2,
            receiver_any_ok: false,
            sender: Some(1),
            sequence,
            body_bytes_max: FRAME_BODY_BYTES_MAX,
        }
    }

    // Proves that sealed frames come back whole, byte by byte, and that the reader waits
    // for the rest of a frame instead of failing on a partial one.
    #[test]
    fn frames_round_trip_through_partial_reads() {
        let key = MacKey::hello(&[1; 32], 77);
        let mut wire = Vec::new();
        seal_frame(&mut wire, &key, header(kind::SITE, 5), |body| {
            body.extend_from_slice(b"hello body")
        })
        .expect("small body");
        seal_frame(&mut wire, &key, header(kind::HEARTBEAT, 6), |_| {}).expect("empty body");
        let mut reader = FrameReader::new();
        let mut frames = Vec::new();
        let mut sequence = 5;
        for byte in wire {
            reader.buffer_mut().extend_from_slice(&[byte]);
            if let Some(frame) = reader.next_frame(&expect(sequence), &key).expect("valid") {
                sequence += 1;
                frames.push(frame);
            }
        }
        assert_eq!(frames.len(), 2);
        assert_eq!(&frames[0].body[..], b"hello body");
        assert_eq!(frames[1].header.kind, kind::HEARTBEAT);
        assert!(frames[1].body.is_empty());
        assert_eq!(reader.buffered(), 0);
    }

    // Proves that each header check yields its own reason (a body too long for a hello
    // included), and a changed byte of the body yields a MAC failure.
    #[test]
    fn each_check_has_its_reason() {
        let key = MacKey::hello(&[1; 32], 77);
        let mut valid = Vec::new();
        seal_frame(&mut valid, &key, header(kind::SITE, 1), |body| {
            body.extend_from_slice(&[5; HELLO_BODY_BYTES + 7])
        })
        .expect("small body");
        let cases: [(usize, u8, RejectReason); 9] = [
            (0, 0x00, RejectReason::BadMagic),
            (4, 0x07, RejectReason::BadVersion),
            (6, 0x00, RejectReason::BadKind),
            (7, 0x01, RejectReason::BadKind),
            (11, 0x7f, RejectReason::Oversized),
            (16, 0x4e, RejectReason::BadCluster),
            (14, 0x03, RejectReason::WrongReceiver),
            (12, 0x09, RejectReason::BadSender),
            (24, 0x02, RejectReason::BadSequence),
        ];
        for (offset, value, reason) in cases {
            let mut bytes = valid.clone();
            bytes[offset] = value;
            let mut reader = FrameReader::new();
            reader.buffer_mut().extend_from_slice(&bytes);
            assert_eq!(
                reader.next_frame(&expect(1), &key),
                Err(reason),
                "offset {offset}"
            );
        }
        let mut before_hello = expect(1);
        before_hello.body_bytes_max = HELLO_BODY_BYTES;
        let mut reader = FrameReader::new();
        reader
            .buffer_mut()
            .extend_from_slice(&valid[..HEADER_BYTES]);
        assert_eq!(
            reader.next_frame(&before_hello, &key),
            Err(RejectReason::Oversized),
            "before the handshake a body longer than a hello is refused at the header"
        );
        let mut bytes = valid.clone();
        bytes[HEADER_BYTES + 3] ^= 1;
        let mut reader = FrameReader::new();
        reader.buffer_mut().extend_from_slice(&bytes);
        assert_eq!(
            reader.next_frame(&expect(1), &key),
            Err(RejectReason::BadMac)
        );
    }
}
