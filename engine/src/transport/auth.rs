//! Link authentication: the keys of one connection and the MAC of every frame.
//!
//! Why keyed BLAKE3 and not HMAC-SHA256: `bench/benches/mac.rs` measures both on
//! vote-sized frames (the README has the figures). A frame of up to 64 bytes of header
//! and body is one BLAKE3 compression, where HMAC-SHA256 runs the SHA-256 compression at
//! least four times (inner and outer hash, each with its key block); BLAKE3 also
//! provides a key-derivation mode, so one primitive serves both the KDF and the MAC.
//!
//! Keys:
//! - the *hello key*, `derive_key("tricommit 2026-12 transport hello v1", secret |
//!   cluster_id)`, MACs the handshake frames only: a peer without the secret is refused
//!   at its first frame;
//! - the *session key* of one direction, `derive_key("tricommit 2026-12 transport
//!   session v1", secret | cluster_id | dialer u16 | acceptor u16 | dialer nonce |
//!   acceptor nonce | sender u16)`, MACs every later frame that `sender` sends. Both
//!   nonces are fresh from the OS at each handshake, so a frame recorded on one
//!   connection fails the MAC on every other.

/// Bytes of the cluster secret (`cluster.key`).
pub const SECRET_BYTES: usize = 32;
/// Bytes of a handshake nonce.
pub const NONCE_BYTES: usize = 32;
/// Bytes of the MAC that ends every frame: BLAKE3's output truncated to 128 bits.
pub const MAC_BYTES: usize = 16;

const HELLO_CONTEXT: &str = "tricommit 2026-12 transport hello v1";
const SESSION_CONTEXT: &str = "tricommit 2026-12 transport session v1";

/// A 256-bit MAC key.
#[derive(Clone)]
pub struct MacKey([u8; 32]);

impl std::fmt::Debug for MacKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        formatter.write_str("MacKey(..)")
    }
}

impl MacKey {
    /// The key of the handshake frames of a cluster.
    pub fn hello(secret: &[u8; SECRET_BYTES], cluster_id: u64) -> MacKey {
        let mut hasher = blake3::Hasher::new_derive_key(HELLO_CONTEXT);
        hasher.update(secret);
        hasher.update(&cluster_id.to_le_bytes());
        MacKey(*hasher.finalize().as_bytes())
    }

    /// The key of the frames `sender` sends on the connection the two nonces opened.
    pub fn session(secret: &[u8; SECRET_BYTES], cluster_id: u64, session: &SessionIds) -> MacKey {
        let mut hasher = blake3::Hasher::new_derive_key(SESSION_CONTEXT);
        hasher.update(secret);
        hasher.update(&cluster_id.to_le_bytes());
        hasher.update(&session.dialer.to_le_bytes());
        hasher.update(&session.acceptor.to_le_bytes());
        hasher.update(&session.dialer_nonce);
        hasher.update(&session.acceptor_nonce);
        hasher.update(&session.sender.to_le_bytes());
        MacKey(*hasher.finalize().as_bytes())
    }

    /// The MAC of `bytes` (a frame's header and body).
    pub fn mac(&self, bytes: &[u8]) -> [u8; MAC_BYTES] {
        let hash = blake3::keyed_hash(&self.0, bytes);
        let mut mac = [0u8; MAC_BYTES];
        mac.copy_from_slice(&hash.as_bytes()[..MAC_BYTES]);
        mac
    }

    /// Whether `mac` is the MAC of `bytes`, compared in constant time.
    pub fn verify(&self, bytes: &[u8], mac: &[u8]) -> bool {
        let expected = self.mac(bytes);
        if mac.len() != MAC_BYTES {
            return false;
        }
        let difference = expected
            .iter()
            .zip(mac)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        difference == 0
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
