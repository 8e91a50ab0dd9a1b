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
//! It also keeps, per participant, the smoothed share of its votes that were yes (EWMA,
//! gain 1/8; a missed deadline counts as a batch of no votes). From those shares it
//! predicts which share of a batch's transactions will reach PRE-COMMIT, and the
//! coordinator speculates on a batch (announces it to the other replicas while its
//! votes are still coming in, protocol.md §4.6) only when that share is at least
//! [`SPECULATE_SHARE_MIN`].
//!
//! All arithmetic is integer microseconds and fixed-point shares; no clock is read
//! here.

use super::types::{sites_of, SiteId, SITES_MAX};

/// Gain of the smoothed latency: `srtt += (sample - srtt) / 8`.
const SRTT_GAIN_SHIFT: u32 = 3;
/// Gain of the deviation: `rttvar += (|sample - srtt| - rttvar) / 4`.
const RTTVAR_GAIN_SHIFT: u32 = 2;
/// The timeout is `srtt + RTTVAR_WEIGHT · rttvar`.
const RTTVAR_WEIGHT: u64 = 4;
/// Doublings after consecutive missed deadlines.
const BACKOFF_SHIFT_MAX: u32 = 4;
/// Fixed-point one for success shares: a share is `yes / (yes + no)` times this.
pub const SHARE_ONE: u64 = 1 << 16;
/// Gain of the success share: `share += (sample - share) / 8`, one sample per VOTES.
const SHARE_GAIN_SHIFT: u32 = 3;
/// Speculate on a batch only if at least this share of its transactions is predicted
/// to reach PRE-COMMIT (fixed point, [`SHARE_ONE`] = all). Below it, most of what the
/// backups would log early belongs to transactions that abort.
pub const SPECULATE_SHARE_MIN: u64 = SHARE_ONE / 2;
/// Distinct member masks whose predicted success is remembered while one batch is
/// scored; transactions with other masks are scored one by one.
const SCORED_MASKS_MAX: usize = 8;

/// One participant's estimate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Estimate {
    /// Smoothed vote latency; 0 until the first sample.
    srtt_us: u64,
    rttvar_us: u64,
    samples: u64,
    backoff_shift: u32,
    /// Smoothed share of yes (and read-only) votes, fixed point; [`SHARE_ONE`] until
    /// the first sample (optimistic: a new participant is speculated on).
    success_share: u64,
}

impl Default for Estimate {
    fn default() -> Estimate {
        Estimate {
            srtt_us: 0,
            rttvar_us: 0,
            samples: 0,
            backoff_shift: 0,
            success_share: SHARE_ONE,
        }
    }
}

/// Vote-latency and success estimates for every site id (only participants get
/// samples).
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

    /// `site` missed its vote deadline: back its timeout off, and count the miss as a
    /// batch of no votes.
    pub fn on_missed(&mut self, site: SiteId) {
        if let Some(estimate) = self.sites.get_mut(site.0 as usize) {
            estimate.backoff_shift = (estimate.backoff_shift + 1).min(BACKOFF_SHIFT_MAX);
            estimate.success_share = ewma(estimate.success_share, 0, SHARE_GAIN_SHIFT);
        }
    }

    /// One VOTES part of `site` carried `yes` yes or read-only votes and `no` no votes.
    pub fn on_outcomes(&mut self, site: SiteId, yes: u64, no: u64) {
        let Some(estimate) = self.sites.get_mut(site.0 as usize) else {
            return;
        };
        let Some(total) = yes.checked_add(no).filter(|&total| total > 0) else {
            return;
        };
        let sample = yes.min(total) * SHARE_ONE / total;
        estimate.success_share = ewma(estimate.success_share, sample, SHARE_GAIN_SHIFT);
    }

    /// The smoothed share of `site`'s votes that were yes, fixed point.
    pub fn success_share(&self, site: SiteId) -> u64 {
        self.sites
            .get(site.0 as usize)
            .map_or(SHARE_ONE, |estimate| estimate.success_share)
    }

    /// The predicted share of the transactions, given as their member masks, that
    /// will reach PRE-COMMIT: per transaction, the product of its participants'
    /// success shares (votes taken as independent), averaged.
    pub fn predicted_share(&self, members: &[u64]) -> u64 {
        if members.is_empty() {
            return SHARE_ONE;
        }
        let mut scored: [(u64, u64); SCORED_MASKS_MAX] = [(0, 0); SCORED_MASKS_MAX];
        let mut scored_len = 0;
        let mut sum = 0u64;
        for &mask in members {
            let share = match scored[..scored_len].iter().find(|(m, _)| *m == mask) {
                Some(&(_, share)) => share,
                None => {
                    let share = sites_of(mask).fold(SHARE_ONE, |share, site| {
                        share * self.success_share(site) / SHARE_ONE
                    });
                    if scored_len < SCORED_MASKS_MAX {
                        scored[scored_len] = (mask, share);
                        scored_len += 1;
                    }
                    share
                }
            };
            sum = sum.saturating_add(share);
        }
        sum / members.len() as u64
    }

    /// Whether speculating on a batch whose transactions have these member masks pays:
    /// see [`SPECULATE_SHARE_MIN`]. `participants` is the union of the masks.
    ///
    /// Fast path, the steady state: if even a transaction on every participant of the
    /// batch, each with the batch's lowest share, is predicted to pass, so is the
    /// mean, and no transaction needs scoring (scoring every one cost 0.4% of the
    /// engine's CPU in a profile of the default load).
    pub fn speculate(&self, participants: u64, members: &[u64]) -> bool {
        let lowest = sites_of(participants)
            .map(|site| self.success_share(site))
            .min()
            .unwrap_or(SHARE_ONE);
        let worst = sites_of(participants).fold(SHARE_ONE, |share, _| share * lowest / SHARE_ONE);
        worst >= SPECULATE_SHARE_MIN || self.predicted_share(members) >= SPECULATE_SHARE_MIN
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

    // Proves the success share: optimistic before any sample, it follows a
    // participant that starts voting no below the speculation bound, counts a missed
    // deadline as no votes, and climbs back once the votes are yes again.
    #[test]
    fn success_share_switches_speculation() {
        let mut predictor = Predictor::default();
        let both = SiteId(3).bit() | SiteId(4).bit();
        let txns = [both; 100];
        assert!(predictor.speculate(both, &txns));
        for _ in 0..50 {
            predictor.on_outcomes(SiteId(3), 99, 1);
            predictor.on_outcomes(SiteId(4), 100, 0);
        }
        assert!(predictor.speculate(both, &txns));
        assert!(predictor.success_share(SiteId(3)) > SHARE_ONE * 98 / 100);
        for _ in 0..40 {
            predictor.on_outcomes(SiteId(3), 10, 90);
        }
        let share = predictor.success_share(SiteId(3));
        assert!(share < SHARE_ONE * 15 / 100, "{share}");
        assert!(!predictor.speculate(both, &txns));
        // Transactions on site 4 alone still pay: the batch average decides.
        let mixed: Vec<u64> = (0..100)
            .map(|k| if k < 80 { SiteId(4).bit() } else { txns[0] })
            .collect();
        assert!(predictor.speculate(both, &mixed));
        for _ in 0..40 {
            predictor.on_outcomes(SiteId(3), 100, 0);
        }
        assert!(predictor.speculate(both, &txns));
        for _ in 0..10 {
            predictor.on_missed(SiteId(3));
        }
        assert!(!predictor.speculate(both, &txns));
        // No votes at all (an empty part) is no sample.
        let before = predictor.success_share(SiteId(3));
        predictor.on_outcomes(SiteId(3), 0, 0);
        assert_eq!(predictor.success_share(SiteId(3)), before);
    }
}
