//! What opening each site's log found and did, as `Engine::recovery_report` returns it.
//!
//! `Wal::open` drops a torn tail (the remains of writes that were never synced) and may
//! replace io_uring by fdatasync; both are legitimate, and both are things an operator
//! must be able to see after a crash or on a new kernel. The engine keeps the WAL's
//! `Recovery` of every site and renders it as a few lines.

use std::fmt;

use tricommit_wal::{Recovery, SyncBackend};

/// One site's WAL recovery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteRecovery {
    /// `replica-N` or `participant-N`.
    pub site: String,
    pub wal: Recovery,
}

/// Every site's WAL recovery, in site order (replicas first).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub sites: Vec<SiteRecovery>,
}

impl RecoveryReport {
    /// Records recovered over every site.
    pub fn records(&self) -> u64 {
        self.sites.iter().map(|site| site.wal.records).sum()
    }

    /// Torn-tail bytes dropped over every site.
    pub fn tail_bytes_dropped(&self) -> u64 {
        self.sites
            .iter()
            .map(|site| site.wal.tail_bytes_dropped)
            .sum()
    }

    /// Sites whose log had a torn tail.
    pub fn torn_tails(&self) -> impl Iterator<Item = &SiteRecovery> {
        self.sites
            .iter()
            .filter(|site| site.wal.tail_bytes_dropped > 0)
    }

    /// The backends in use, each once, in site order.
    pub fn backends(&self) -> Vec<SyncBackend> {
        let mut backends = Vec::new();
        for site in &self.sites {
            if !backends.contains(&site.wal.backend) {
                backends.push(site.wal.backend);
            }
        }
        backends
    }

    /// Sites that fell back from io_uring, with the kernel's reason.
    pub fn fallbacks(&self) -> impl Iterator<Item = (&str, &str)> {
        self.sites.iter().filter_map(|site| {
            let reason = site.wal.backend_fallback_reason.as_deref()?;
            Some((site.site.as_str(), reason))
        })
    }

    /// Whether anything happened that an operator should read: a torn tail or a
    /// backend fallback.
    pub fn is_notable(&self) -> bool {
        self.torn_tails().next().is_some() || self.fallbacks().next().is_some()
    }
}

impl fmt::Display for RecoveryReport {
    /// One summary line, then one line per torn tail and per fallback.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let backends: Vec<String> = self
            .backends()
            .iter()
            .map(|backend| format!("{backend:?}"))
            .collect();
        write!(
            f,
            "recovered {} records over {} logs; sync backend {}; torn tails dropped: {} bytes",
            self.records(),
            self.sites.len(),
            backends.join("+"),
            self.tail_bytes_dropped()
        )?;
        for site in self.torn_tails() {
            let at = site
                .wal
                .tail_position
                .as_ref()
                .map(|(path, offset)| format!(" at {}:{offset}", path.display()))
                .unwrap_or_default();
            write!(
                f,
                "\n  {}: dropped a torn tail of {} bytes{at} (writes never synced before a crash)",
                site.site, site.wal.tail_bytes_dropped
            )?;
        }
        for (site, reason) in self.fallbacks() {
            write!(
                f,
                "\n  {site}: io_uring unavailable, using fdatasync: {reason}"
            )?;
        }
        Ok(())
    }
}
