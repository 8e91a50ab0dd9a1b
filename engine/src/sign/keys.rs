//! A participant's vote key on disk: `DIR/<site>/vote.key`, the 32-byte ed25519 seed,
//! mode 0600, written from the operating system's random source.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;

use super::SECRET_KEY_BYTES;
use crate::client::config::write_atomically;

/// The vote key's file name in a participant's data directory.
pub const VOTE_KEY_FILE: &str = "vote.key";

/// Why a vote key could not be made, read or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "no vote key at {path}: this cluster signs votes (its cluster.toml has [vote_keys]); \
             run `tricommit cluster vote-keys DIR` to add keys to a cluster made before them"
    )]
    Missing { path: PathBuf },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: a vote key is exactly {SECRET_KEY_BYTES} bytes, not {bytes}")]
    Length { path: PathBuf, bytes: u64 },
    #[error("{path} is readable by others (mode {mode:o}); chmod 600 it")]
    Mode { path: PathBuf, mode: u32 },
    #[error("{path}: its public key is not the one cluster.toml lists for {site}")]
    NotListed { path: PathBuf, site: String },
    #[error("the operating system's random source failed: {0}")]
    Random(String),
    #[error(transparent)]
    Write(#[from] crate::client::config::ConfigError),
}

/// A fresh key from the operating system's random source.
pub fn generate() -> Result<SigningKey, KeyError> {
    let mut seed = [0u8; SECRET_KEY_BYTES];
    getrandom::fill(&mut seed).map_err(|error| KeyError::Random(error.to_string()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Writes a fresh key to `site_dir/vote.key` (mode 0600, atomically) and returns it.
pub fn write_new(site_dir: &Path) -> Result<SigningKey, KeyError> {
    let key = generate()?;
    write_atomically(site_dir, VOTE_KEY_FILE, &key.to_bytes(), 0o600)?;
    Ok(key)
}

/// Reads `site_dir/vote.key`: exactly 32 bytes, readable by its owner only.
pub fn load(site_dir: &Path) -> Result<SigningKey, KeyError> {
    let path = site_dir.join(VOTE_KEY_FILE);
    let read_error = |source: std::io::Error| match source.kind() {
        std::io::ErrorKind::NotFound => KeyError::Missing { path: path.clone() },
        _ => KeyError::Read {
            path: path.clone(),
            source,
        },
    };
    let metadata = std::fs::metadata(&path).map_err(read_error)?;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Mode {
            path: path.clone(),
            mode,
        });
    }
    if metadata.len() != SECRET_KEY_BYTES as u64 {
        return Err(KeyError::Length {
            path: path.clone(),
            bytes: metadata.len(),
        });
    }
    let mut seed = [0u8; SECRET_KEY_BYTES];
    std::fs::File::open(&path)
        .and_then(|mut file| file.read_exact(&mut seed))
        .map_err(read_error)?;
    Ok(SigningKey::from_bytes(&seed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_key_loads_back_and_a_bad_one_is_refused() {
        // Proves that `vote.key` round-trips, is private, and that a missing, short or
        // world-readable key is a clear error instead of a silent unsigned node.
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(load(dir.path()), Err(KeyError::Missing { .. })));
        let key = write_new(dir.path()).unwrap();
        assert_eq!(load(dir.path()).unwrap().to_bytes(), key.to_bytes());
        let path = dir.path().join(VOTE_KEY_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(load(dir.path()), Err(KeyError::Mode { .. })));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, [1u8; 5]).unwrap();
        assert!(matches!(load(dir.path()), Err(KeyError::Length { .. })));
        assert_ne!(
            generate().unwrap().to_bytes(),
            generate().unwrap().to_bytes()
        );
    }
}
