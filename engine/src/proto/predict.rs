//! The active coordinator's per-participant vote-latency predictor, and the adaptive
//! vote timeout it sets (Jacobson/Karels, as TCP computes its retransmission timeout,
//! RFC 6298).
//!
//! Each sample is the time from a batch's PREPARE to one participant's VOTES. Per
//! participant the predictor keeps the smoothed latency `srtt` (EWMA, gain 1/8) and
//! its mean deviation `rttvar` (EWMA, gain 1/4); the participant's timeout is
//! `srtt + 4·rttvar`. A batch waits for the slowest of its participants, clamped to
//! `[min(vote_timeout_min_us, vote_timeout_us), vote_timeout_max_us]`; before a
//! participant's first sample, the configured `vote_timeout_us` stands. After a participant misses a deadline its
//! timeout doubles (Karn's backoff, up to `BACKOFF_SHIFT_MAX`) until a vote arrives in
//! time again, so one slow spell does not turn into a run of aborts.
//!
//! All arithmetic is integer microseconds; no clock is read here.

use super::types::{sites_of, SiteId, SITES_MAX};

/// Gain of the smoothed latency: `srtt += (sample - srtt) / 8`.
const SRTT_GAIN_SHIFT: u32 = 3;
/// Gain of the deviation: `rttvar += (|sample - srtt| - rttvar) / 4`.
const RTTVAR_GAIN_SHIFT: u32 = 2;
/// The timeout is `srtt + RTTVAR_WEIGHT · rttvar`.
const RTTVAR_WEIGHT: u64 = 4;
/// Doublings after consecutive missed deadlines.
const BACKOFF_SHIFT_MAX: u32 = 4;

/// One participant's estimate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
struct Estimate {
    /// Smoothed vote latency; 0 until the first sample.
    srtt_us: u64,
    rttvar_us: u64,
    samples: u64,
    backoff_shift: u32,
}

/// Vote-latency estimates for every site id (only participants get samples).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Predictor {
    sites: [Estimate; SITES_MAX],
}

impl Default for Predictor {
    fn default() -> Predictor {
        Predictor {
            sites: [Estimate::default(); SITES_MAX],
        }
    }
}

/// The bounds the adaptive timeout stays within.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VoteTimeouts {
    /// Before any sample.
    pub initial_us: u64,
    pub min_us: u64,
    pub max_us: u64,
}

impl Predictor {
    /// A vote of `site` arrived `latency_us` after its PREPARE left.
    pub fn on_vote(&mut self, site: SiteId, latency_us: u64) {
        let Some(estimate) = self.sites.get_mut(site.0 as usize) else {
            return;
        };
        if estimate.samples == 0 {
            estimate.srtt_us = latency_us;
            estimate.rttvar_us = latency_us / 2;
        } else {
            let deviation = estimate.srtt_us.abs_diff(latency_us);
            estimate.rttvar_us = ewma(estimate.rttvar_us, deviation, RTTVAR_GAIN_SHIFT);
            estimate.srtt_us = ewma(estimate.srtt_us, latency_us, SRTT_GAIN_SHIFT);
        }
        estimate.samples = estimate.samples.saturating_add(1);
        estimate.backoff_shift = 0;
    }

    /// `site` missed its vote deadline: back its timeout off.
    pub fn on_missed(&mut self, site: SiteId) {
        if let Some(estimate) = self.sites.get_mut(site.0 as usize) {
            estimate.backoff_shift = (estimate.backoff_shift + 1).min(BACKOFF_SHIFT_MAX);
        }
    }

    /// How long a batch whose participants are `participants` (a site mask) waits for
    /// votes.
    pub fn vote_timeout_us(&self, participants: u64, bounds: VoteTimeouts) -> u64 {
        let mut timeout_us = 0u64;
        for site in sites_of(participants) {
            let Some(estimate) = self.sites.get(site.0 as usize) else {
                continue;
            };
            let base_us = if estimate.samples == 0 {
                bounds.initial_us
            } else {
                estimate
                    .srtt_us
                    .saturating_add(estimate.rttvar_us.saturating_mul(RTTVAR_WEIGHT))
            };
            timeout_us = timeout_us.max(base_us.saturating_mul(1 << estimate.backoff_shift));
        }
        // A configured initial timeout below the floor lowers the floor: it is what the
        // operator asked for before any sample.
        let min_us = bounds.min_us.min(bounds.initial_us);
        timeout_us.clamp(min_us, bounds.max_us.max(min_us))
    }

    /// The smoothed vote latency of `site` and its deviation, once sampled.
    pub fn latency_us(&self, site: SiteId) -> Option<(u64, u64)> {
        let estimate = self.sites.get(site.0 as usize)?;
        (estimate.samples > 0).then_some((estimate.srtt_us, estimate.rttvar_us))
    }
}

/// `average + (sample - average) / 2^gain_shift`, in integers.
fn ewma(average: u64, sample: u64, gain_shift: u32) -> u64 {
    if sample >= average {
        average + ((sample - average) >> gain_shift)
    } else {
        average - ((average - sample) >> gain_shift)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: VoteTimeouts = VoteTimeouts {
        initial_us: 1_000_000,
        min_us: 10_000,
        max_us: 5_000_000,
    };

    // Proves the first sample sets srtt = R and rttvar = R/2 (RFC 6298 2.2), so the
    // timeout is 3R, and that a site with no sample keeps the initial timeout.
    #[test]
    fn first_sample_and_unsampled_sites() {
        let mut predictor = Predictor::default();
        assert_eq!(
            predictor.vote_timeout_us(SiteId(3).bit(), BOUNDS),
            1_000_000
        );
        predictor.on_vote(SiteId(3), 20_000);
        assert_eq!(predictor.latency_us(SiteId(3)), Some((20_000, 10_000)));
        assert_eq!(predictor.vote_timeout_us(SiteId(3).bit(), BOUNDS), 60_000);
        let both = SiteId(3).bit() | SiteId(4).bit();
        assert_eq!(predictor.vote_timeout_us(both, BOUNDS), 1_000_000);
    }

    // Proves steady samples converge: the deviation decays, and the timeout approaches
    // the latency from above, never under it.
    #[test]
    fn steady_latency_converges() {
        let mut predictor = Predictor::default();
        for _ in 0..200 {
            predictor.on_vote(SiteId(2), 40_000);
        }
        let (srtt_us, rttvar_us) = predictor.latency_us(SiteId(2)).expect("sampled");
        assert_eq!(srtt_us, 40_000);
        assert!(rttvar_us < 100, "{rttvar_us}");
        let timeout_us = predictor.vote_timeout_us(SiteId(2).bit(), BOUNDS);
        assert!((40_000..40_400).contains(&timeout_us), "{timeout_us}");
    }

    // Proves a jittery site gets a wider timeout than a steady one of the same mean,
    // and that the slowest participant sets the batch's timeout.
    #[test]
    fn jitter_widens_and_the_slowest_site_rules() {
        let mut predictor = Predictor::default();
        for k in 0..100u64 {
            predictor.on_vote(SiteId(2), 30_000);
            predictor.on_vote(SiteId(3), if k % 2 == 0 { 10_000 } else { 50_000 });
        }
        let steady = predictor.vote_timeout_us(SiteId(2).bit(), BOUNDS);
        let jittery = predictor.vote_timeout_us(SiteId(3).bit(), BOUNDS);
        assert!(jittery > steady + 40_000, "{jittery} vs {steady}");
        let both = predictor.vote_timeout_us(SiteId(2).bit() | SiteId(3).bit(), BOUNDS);
        assert_eq!(both, jittery);
    }

    // Proves the clamp and Karn's backoff: misses double the timeout up to the bound,
    // and one vote in time resets it.
    #[test]
    fn clamp_and_backoff() {
        let mut predictor = Predictor::default();
        for _ in 0..100 {
            predictor.on_vote(SiteId(5), 1_000);
        }
        let site = SiteId(5).bit();
        assert_eq!(predictor.vote_timeout_us(site, BOUNDS), BOUNDS.min_us);
        for _ in 0..2 {
            predictor.on_missed(SiteId(5));
        }
        assert_eq!(predictor.vote_timeout_us(site, BOUNDS), BOUNDS.min_us);
        let mut slow = Predictor::default();
        slow.on_vote(SiteId(5), 1_000_000);
        let base = slow.vote_timeout_us(site, BOUNDS);
        slow.on_missed(SiteId(5));
        assert_eq!(
            slow.vote_timeout_us(site, BOUNDS),
            (base * 2).min(BOUNDS.max_us)
        );
        for _ in 0..10 {
            slow.on_missed(SiteId(5));
        }
        assert_eq!(slow.vote_timeout_us(site, BOUNDS), BOUNDS.max_us);
        slow.on_vote(SiteId(5), 1_000_000);
        assert!(slow.vote_timeout_us(site, BOUNDS) < BOUNDS.max_us);
    }
}
