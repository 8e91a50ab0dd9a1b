//! Link authentication: the keys of one connection and the MAC of every frame.
//!
//! Why HMAC-SHA256 and not keyed BLAKE3: `bench/benches/mac.rs` measures both on the
//! bytes the transport MACs for a VOTES frame. On this machine (x86-64 with the SHA
//! extensions, which the `sha2` crate uses) they tie on a 73-byte frame (130 and 131 ns)
//! and HMAC-SHA256 is faster on larger ones: 1.2× at 313 bytes, 1.6× at 1081 bytes, where
//! BLAKE3 still hashes its first 1024-byte chunk one block at a time (README, "TCP
//! transport"). The keyed HMAC state is computed once per connection and cloned per
//! frame. HMAC-SHA256 is also the most widely reviewed MAC, and it serves as the KDF
//! too (a PRF keyed with the secret), so the transport needs one primitive.
//!
//! Keys (every input fixed-width little-endian):
//! - the *hello key*, `HMAC-SHA256(secret, "tricommit transport hello v1" |
//!   cluster_id u64)`, MACs the handshake frames only: a peer without the secret is
//!   refused at its first frame;
//! - the *session key* of one direction, `HMAC-SHA256(secret, "tricommit transport
//!   session v1" | cluster_id u64 | dialer u16 | acceptor u16 | dialer nonce [32] |
//!   acceptor nonce [32] | sender u16)`, MACs every later frame that `sender` sends. Both
//!   nonces are fresh from the OS at each handshake, so a frame recorded on one
//!   connection fails the MAC on every other.
//!
//! A frame's MAC is `HMAC-SHA256(key, header | body)` truncated to its first 16 bytes.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Bytes of the cluster secret (`cluster.key`).
pub const SECRET_BYTES: usize = 32;
/// Bytes of a handshake nonce.
pub const NONCE_BYTES: usize = 32;
/// Bytes of the MAC that ends every frame: HMAC-SHA256 truncated to 128 bits.
pub const MAC_BYTES: usize = 16;

const HELLO_LABEL: &[u8] = b"tricommit transport hello v1";
const SESSION_LABEL: &[u8] = b"tricommit transport session v1";

type HmacSha256 = Hmac<Sha256>;

/// A MAC key, kept as the keyed HMAC state (inner and outer pads already hashed), so
/// that each frame clones it instead of rehashing the key.
#[derive(Clone)]
pub struct MacKey(HmacSha256);

impl std::fmt::Debug for MacKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        formatter.write_str("MacKey(..)")
    }
}

impl MacKey {
    /// The key of the handshake frames of a cluster.
    pub fn hello(secret: &[u8; SECRET_BYTES], cluster_id: u64) -> MacKey {
        let mut kdf = keyed(secret);
        kdf.update(HELLO_LABEL);
        kdf.update(&cluster_id.to_le_bytes());
        MacKey(keyed(&kdf.finalize().into_bytes().into()))
    }

    /// The key of the frames `session.sender` sends on the connection the two nonces
    /// opened.
    pub fn session(secret: &[u8; SECRET_BYTES], cluster_id: u64, session: &SessionIds) -> MacKey {
        let mut kdf = keyed(secret);
        kdf.update(SESSION_LABEL);
        kdf.update(&cluster_id.to_le_bytes());
        kdf.update(&session.dialer.to_le_bytes());
        kdf.update(&session.acceptor.to_le_bytes());
        kdf.update(&session.dialer_nonce);
        kdf.update(&session.acceptor_nonce);
        kdf.update(&session.sender.to_le_bytes());
        MacKey(keyed(&kdf.finalize().into_bytes().into()))
    }

    /// The MAC of `bytes` (a frame's header and body).
    pub fn mac(&self, bytes: &[u8]) -> [u8; MAC_BYTES] {
        let mut state = self.0.clone();
        state.update(bytes);
        let tag = state.finalize().into_bytes();
        let mut mac = [0u8; MAC_BYTES];
        mac.copy_from_slice(&tag[..MAC_BYTES]);
        mac
    }

    /// Whether `mac` is the MAC of `bytes`, compared in constant time.
    pub fn verify(&self, bytes: &[u8], mac: &[u8]) -> bool {
        if mac.len() != MAC_BYTES {
            return false;
        }
        let mut state = self.0.clone();
        state.update(bytes);
        state.verify_truncated_left(mac).is_ok()
    }
}

/// An HMAC-SHA256 state keyed with 32 bytes.
fn keyed(key: &[u8; 32]) -> HmacSha256 {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    match HmacSha256::new_from_slice(key) {
        Ok(state) => state,
        Err(_) => unreachable!("HMAC accepts a key of any length"),
    }
}

/// What names one direction of one connection for [`MacKey::session`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionIds {
    pub dialer: u16,
    pub acceptor: u16,
    pub dialer_nonce: [u8; NONCE_BYTES],
    pub acceptor_nonce: [u8; NONCE_BYTES],
    /// The end whose frames the key authenticates (`dialer` or `acceptor`).
    pub sender: u16,
}

/// Why the OS random source failed.
#[derive(Debug, thiserror::Error)]
#[error("the OS random source failed: {0}")]
pub struct RandomError(String);

/// A fresh nonce from the OS random source.
pub fn fresh_nonce() -> Result<[u8; NONCE_BYTES], RandomError> {
    let mut nonce = [0u8; NONCE_BYTES];
    getrandom::fill(&mut nonce).map_err(|error| RandomError(error.to_string()))?;
    Ok(nonce)
}

/// A seed for the reconnect jitter, from the OS random source.
pub fn random_seed() -> Result<u64, RandomError> {
    let mut seed = [0u8; 8];
    getrandom::fill(&mut seed).map_err(|error| RandomError(error.to_string()))?;
    Ok(u64::from_le_bytes(seed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(sender: u16, dialer_nonce: u8) -> SessionIds {
        SessionIds {
            dialer: 1,
            acceptor: 2,
            dialer_nonce: [dialer_nonce; NONCE_BYTES],
            acceptor_nonce: [9; NONCE_BYTES],
            sender,
        }
    }

    // Proves that the session key depends on the direction, the nonces and the secret,
    // and that verification rejects a flipped bit and a short MAC.
    #[test]
    fn keys_separate_directions_connections_and_clusters() {
        let secret = [7u8; SECRET_BYTES];
        let forward = MacKey::session(&secret, 1, &ids(1, 3));
        let backward = MacKey::session(&secret, 1, &ids(2, 3));
        let next_connection = MacKey::session(&secret, 1, &ids(1, 4));
        let other_cluster = MacKey::session(&secret, 2, &ids(1, 3));
        let other_secret = MacKey::session(&[8u8; SECRET_BYTES], 1, &ids(1, 3));
        let mac = forward.mac(b"frame");
        assert!(forward.verify(b"frame", &mac));
        for other in [&backward, &next_connection, &other_cluster, &other_secret] {
            assert!(!other.verify(b"frame", &mac));
        }
        let mut flipped = mac;
        flipped[3] ^= 0x10;
        assert!(!forward.verify(b"frame", &flipped));
        assert!(!forward.verify(b"frame", &mac[..MAC_BYTES - 1]));
        assert!(!MacKey::hello(&secret, 1).verify(b"frame", &mac));
    }
}
