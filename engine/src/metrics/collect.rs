//! The exposition: a `prometheus-client` custom collector that reads the engine's
//! atomics at scrape time.
//!
//! Why `prometheus-client` with a custom collector rather than tikv's `prometheus`:
//! the engine already keeps its own atomics (per batch, per sync, per chunk), so all a
//! library has to do is write the OpenMetrics text correctly at scrape time.
//! `prometheus-client` is the official OpenMetrics crate, its `Collector` trait is
//! exactly "encode what you hold when asked", and it adds four small crates to the
//! build. tikv's `prometheus` would have its own metric objects (with their own atomics
//! or per-thread locals that need flushing), so every value would be kept twice.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::histogram::HistogramSnapshot;
use super::{
    EngineMetrics, Phase, Stage, ABORT_REASON_LABELS, BUSY_REASON_LABELS, PRIORITY_LABELS,
    TERMINATION_RESULT_LABELS,
};
use crate::proto::SiteId;
use crate::transport::{PeerStats, RejectReason};

/// Microseconds per second, for the `_seconds` families recorded in microseconds.
const US_PER_SECOND: f64 = 1e6;

/// The collector a node or the load generator registers; cheap to clone.
#[derive(Debug, Clone)]
pub struct EngineCollector {
    metrics: Arc<EngineMetrics>,
}

impl EngineCollector {
    pub fn new(metrics: Arc<EngineMetrics>) -> EngineCollector {
        EngineCollector { metrics }
    }
}

/// Renders every family as OpenMetrics text (what `GET /metrics` returns).
pub fn encode_text(metrics: &Arc<EngineMetrics>) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(EngineCollector::new(metrics.clone())));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text)
}

/// Renders every family in the Prometheus text format 0.0.4, for clients that do not
/// ask for OpenMetrics (curl, `promtool check metrics`): same families and samples.
pub fn encode_prometheus_text(metrics: &Arc<EngineMetrics>) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(EngineCollector::new(metrics.clone())));
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)?;
    Ok(text)
}

type Labels<'a> = Vec<(&'static str, &'a str)>;
/// A site's label and its metrics.
type Site<'a> = (&'a str, &'a super::SiteMetrics);

/// One histogram per item of `all`, each labelled `key` = its `label`.
fn by_label<T: Copy>(
    key: &'static str,
    all: &[T],
    label: fn(T) -> &'static str,
    snapshot: impl Fn(T) -> HistogramSnapshot,
) -> Vec<(Labels<'static>, HistogramSnapshot)> {
    all.iter()
        .map(|&item| (vec![(key, label(item))], snapshot(item)))
        .collect()
}

/// Helpers over one descriptor encoder: one family per call.
struct Families<'e, 'a> {
    encoder: &'e mut DescriptorEncoder<'a>,
}

impl Families<'_, '_> {
    fn counter(&mut self, name: &str, help: &str, value: u64) -> Result<(), std::fmt::Error> {
        let metric = self
            .encoder
            .encode_descriptor(name, help, None, MetricType::Counter)?;
        ConstCounter::new(value).encode(metric)
    }

    fn gauge(&mut self, name: &str, help: &str, value: i64) -> Result<(), std::fmt::Error> {
        let metric = self
            .encoder
            .encode_descriptor(name, help, None, MetricType::Gauge)?;
        ConstGauge::new(value).encode(metric)
    }

    fn labelled_counters(
        &mut self,
        name: &str,
        help: &str,
        samples: &[(Labels<'_>, u64)],
    ) -> Result<(), std::fmt::Error> {
        let mut metric = self
            .encoder
            .encode_descriptor(name, help, None, MetricType::Counter)?;
        for (labels, value) in samples {
            ConstCounter::new(*value).encode(metric.encode_family(labels)?)?;
        }
        Ok(())
    }

    fn labelled_gauges(
        &mut self,
        name: &str,
        help: &str,
        samples: &[(Labels<'_>, i64)],
    ) -> Result<(), std::fmt::Error> {
        let mut metric = self
            .encoder
            .encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (labels, value) in samples {
            ConstGauge::new(*value).encode(metric.encode_family(labels)?)?;
        }
        Ok(())
    }

    /// A histogram family; `unit` scales the recorded integers into base units.
    fn histograms(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        samples: &[(Labels<'_>, HistogramSnapshot)],
    ) -> Result<(), std::fmt::Error> {
        let scale = match unit {
            Some(Unit::Seconds) => 1.0 / US_PER_SECOND,
            _ => 1.0,
        };
        let mut metric =
            self.encoder
                .encode_descriptor(name, help, unit.as_ref(), MetricType::Histogram)?;
        for (labels, snapshot) in samples {
            let buckets: Vec<(f64, u64)> = snapshot
                .bounds
                .iter()
                .map(|&bound| bound as f64 * scale)
                .chain(std::iter::once(f64::INFINITY))
                .zip(snapshot.buckets.iter().copied())
                .collect();
            // A scrape racing an observation may read the count before the bucket;
            // the exposition must stay consistent, so the count is the buckets' sum.
            let count = buckets.iter().map(|(_, count)| count).sum();
            let sum = snapshot.sum as f64 * scale;
            if labels.is_empty() {
                metric.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
            } else {
                metric
                    .encode_family(labels)?
                    .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
            }
        }
        Ok(())
    }
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl prometheus_client::collector::Collector for EngineCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut families = Families {
            encoder: &mut encoder,
        };
        let m = &self.metrics;
        encode_engine(m, &mut families)?;
        encode_load(m, &mut families)?;
        let (replicas, participants) = m.topology();
        let labels: Vec<String> = (0..replicas + participants)
            .map(|index| m.site_label(index))
            .collect();
        let sites: Vec<Site<'_>> = labels
            .iter()
            .enumerate()
            .map(|(index, label)| (label.as_str(), m.site(index)))
            .collect();
        encode_site_logs(&sites, &mut families)?;
        let (replica_sites, participant_sites) = sites.split_at(replicas.min(sites.len()));
        encode_replicas(replica_sites, &mut families)?;
        encode_participants(participant_sites, &mut families)?;
        encode_evidence(m, participant_sites, replicas, &mut families)?;
        encode_links(m, &labels, &mut families)
    }
}

/// The engine-wide families.
fn encode_engine(m: &EngineMetrics, f: &mut Families<'_, '_>) -> Result<(), std::fmt::Error> {
    f.labelled_counters(
        "tricommit_transactions",
        "Transactions whose outcome reached the client, by outcome.",
        &[
            (vec![("outcome", "committed")], load(&m.committed)),
            (vec![("outcome", "aborted")], load(&m.aborted)),
        ],
    )?;
    let aborts: Vec<(Labels<'_>, u64)> = ABORT_REASON_LABELS
        .iter()
        .zip(m.aborts.iter())
        .map(|(reason, count)| (vec![("reason", *reason)], load(count)))
        .collect();
    f.labelled_counters(
        "tricommit_transaction_aborts",
        "Aborted transactions by reason: a participant's no vote, a vote timeout, termination or shutdown.",
        &aborts,
    )?;
    f.counter(
        "tricommit_batches",
        "Batches the batcher closed.",
        load(&m.batches),
    )?;
    f.histograms(
        "tricommit_batch_size_transactions",
        "Transactions per closed batch.",
        None,
        &[(vec![], m.batch_txns.snapshot())],
    )?;
    f.histograms(
        "tricommit_transaction_latency",
        "From Engine::submit to the ticket's completion.",
        Some(Unit::Seconds),
        &[(vec![], m.txn_latency_us.snapshot())],
    )?;
    let phases = by_label("phase", &Phase::ALL, Phase::label, |phase| {
        m.phase_us[phase as usize].snapshot()
    });
    f.histograms(
        "tricommit_phase_duration",
        "Duration of each phase of a batch at the active coordinator (see docs/ops.md).",
        Some(Unit::Seconds),
        &phases,
    )?;
    let stages = by_label("stage", &Stage::ALL, Stage::label, |stage| {
        m.stage_us[stage as usize].snapshot()
    });
    f.histograms(
        "tricommit_stage_wait",
        "Time spent outside the phases: batching per transaction, queued per batch, completion per transaction (see docs/ops.md).",
        Some(Unit::Seconds),
        &stages,
    )?;
    Ok(())
}

/// The engine-wide families about load and failures.
fn encode_load(m: &EngineMetrics, f: &mut Families<'_, '_>) -> Result<(), std::fmt::Error> {
    f.gauge(
        "tricommit_transactions_in_doubt",
        "Transactions of open batches still undecided past the pending timeout.",
        load(&m.in_doubt_txns) as i64,
    )?;
    let in_flight = m.in_flight_txns().unwrap_or(0);
    f.gauge(
        "tricommit_transactions_in_flight",
        "Transactions admitted and not yet completed.",
        in_flight as i64,
    )?;
    let mut rejections: Vec<(Labels<'_>, u64)> = Vec::new();
    for (priority, by_reason) in PRIORITY_LABELS.iter().zip(m.rejections.iter()) {
        for (reason, count) in BUSY_REASON_LABELS.iter().zip(by_reason.iter()) {
            rejections.push((
                vec![("priority", *priority), ("reason", *reason)],
                load(count),
            ));
        }
    }
    f.labelled_counters(
        "tricommit_admission_rejections",
        "Submissions refused with Busy (load shed), by priority and reason.",
        &rejections,
    )?;
    f.counter(
        "tricommit_failovers",
        "Times a client moved to another coordinator replica (cluster client; 0 in-process).",
        load(&m.failovers),
    )
}

/// Equivocation evidence, per participant (the signer).
fn encode_evidence(
    m: &EngineMetrics,
    participant_sites: &[Site<'_>],
    replicas: usize,
    f: &mut Families<'_, '_>,
) -> Result<(), std::fmt::Error> {
    let evidence: Vec<(Labels<'_>, u64)> = participant_sites
        .iter()
        .enumerate()
        .map(|(index, (label, _))| {
            let count = m
                .equivocation_evidence
                .get(replicas + index)
                .map_or(0, load);
            (vec![("participant", *label)], count)
        })
        .collect();
    f.labelled_counters(
        "tricommit_equivocation_evidence",
        "Pairs of different signed votes by one participant for one batch, kept as evidence (cluster).",
        &evidence,
    )
}

/// The per-site WAL, checkpoint and drop families.
fn encode_site_logs(sites: &[Site<'_>], f: &mut Families<'_, '_>) -> Result<(), std::fmt::Error> {
    let per_site = |read: &dyn Fn(&super::SiteMetrics) -> u64| -> Vec<(Labels<'_>, u64)> {
        sites
            .iter()
            .map(|(label, site)| (vec![("site", *label)], read(site)))
            .collect()
    };
    let histograms =
        |read: &dyn Fn(&super::SiteMetrics) -> HistogramSnapshot| -> Vec<(Labels<'_>, _)> {
            sites
                .iter()
                .map(|(label, site)| (vec![("site", *label)], read(site)))
                .collect()
        };
    f.histograms(
        "tricommit_wal_sync_duration",
        "WAL sync duration, from submission to completion, per site.",
        Some(Unit::Seconds),
        &histograms(&|site| site.wal_sync_duration_us.snapshot()),
    )?;
    f.histograms(
        "tricommit_wal_sync_size",
        "Bytes appended since the previous sync, per sync and site.",
        Some(Unit::Bytes),
        &histograms(&|site| site.wal_sync_bytes.snapshot()),
    )?;
    f.labelled_counters(
        "tricommit_wal_appended_bytes",
        "Bytes appended to the WAL (record headers included), per site.",
        &per_site(&|site| load(&site.wal_appended_bytes)),
    )?;
    f.labelled_counters(
        "tricommit_wal_records",
        "Records appended to the WAL, per site.",
        &per_site(&|site| load(&site.wal_records)),
    )?;
    f.labelled_counters(
        "tricommit_frames_dropped",
        "In-process frames dropped because the destination inbox was full (the protocol retransmits).",
        &per_site(&|site| load(&site.frames_dropped)),
    )?;
    f.histograms(
        "tricommit_checkpoint_pause",
        "How long each checkpoint held its site up.",
        Some(Unit::Seconds),
        &histograms(&|site| site.checkpoint_pause_us.snapshot()),
    )?;
    Ok(())
}

/// The families only coordinator replicas have.
fn encode_replicas(
    replica_sites: &[Site<'_>],
    f: &mut Families<'_, '_>,
) -> Result<(), std::fmt::Error> {
    let started: Vec<(Labels<'_>, u64)> = replica_sites
        .iter()
        .map(|(label, site)| (vec![("site", *label)], load(&site.termination_started)))
        .collect();
    f.labelled_counters(
        "tricommit_termination_rounds_started",
        "E3PC recovery elections a coordinator replica started.",
        &started,
    )?;
    let mut results: Vec<(Labels<'_>, u64)> = Vec::new();
    for (label, site) in replica_sites {
        for (result, count) in TERMINATION_RESULT_LABELS
            .iter()
            .zip(site.termination_results.iter())
        {
            results.push((vec![("site", *label), ("result", *result)], load(count)));
        }
    }
    let pending: Vec<(Labels<'_>, i64)> = replica_sites
        .iter()
        .map(|(label, site)| {
            let txns = load(&site.termination_pending_txns) as i64;
            (vec![("site", *label)], txns)
        })
        .collect();
    f.labelled_gauges(
        "tricommit_termination_transactions_pending",
        "Transactions of batches this replica is terminating (E3PC) and has not decided.",
        &pending,
    )?;
    f.labelled_counters(
        "tricommit_termination_results",
        "What E3PC recovery rounds led to: a decision, or a pre-commit or pre-abort round.",
        &results,
    )?;
    Ok(())
}

/// The families about participants, as the active coordinator sees them.
fn encode_participants(
    participant_sites: &[Site<'_>],
    f: &mut Families<'_, '_>,
) -> Result<(), std::fmt::Error> {
    let votes: Vec<(Labels<'_>, HistogramSnapshot)> = participant_sites
        .iter()
        .map(|(label, site)| {
            (
                vec![("participant", *label)],
                site.vote_latency_us.snapshot(),
            )
        })
        .collect();
    f.histograms(
        "tricommit_vote_latency",
        "From a batch's opening to a participant's votes reaching the active coordinator.",
        Some(Unit::Seconds),
        &votes,
    )?;
    let timeouts: Vec<(Labels<'_>, u64)> = participant_sites
        .iter()
        .map(|(label, site)| (vec![("participant", *label)], load(&site.vote_timeouts)))
        .collect();
    f.labelled_counters(
        "tricommit_vote_timeouts",
        "Batches a participant's votes did not reach the active coordinator before the batch was decided.",
        &timeouts,
    )
}

/// The cluster's link families, read from the attached transport's own counters; no
/// samples until a node attaches one (`EngineMetrics::attach_transport`).
fn encode_links(
    m: &EngineMetrics,
    labels: &[String],
    f: &mut Families<'_, '_>,
) -> Result<(), std::fmt::Error> {
    let attached = m.transport();
    let stats = attached.as_ref().map(|attached| &attached.stats);
    // Every other site of the topology, with its link's counters.
    let links: Vec<(&str, &PeerStats)> = match &attached {
        Some(attached) => labels
            .iter()
            .enumerate()
            .filter(|(index, _)| *index != attached.me.0 as usize)
            .filter_map(|(index, label)| {
                let peer = attached.stats.peer(SiteId(index as u8))?;
                Some((label.as_str(), peer))
            })
            .collect(),
        None => Vec::new(),
    };
    encode_link_state(&links, f)?;
    encode_link_traffic(&links, f)?;
    let rejected: Vec<(Labels<'_>, u64)> = match stats {
        Some(stats) => RejectReason::ALL
            .iter()
            .map(|reason| (vec![("reason", reason.name())], stats.rejects(*reason)))
            .collect(),
        None => Vec::new(),
    };
    f.labelled_counters(
        "tricommit_frames_rejected",
        "Frames the transport refused, each closing its connection, by reason (docs/wire-format.md).",
        &rejected,
    )?;
    const CLIENTS_HELP: &str = "Network clients connected to this node now.";
    const BUSY_HELP: &str = "Client transactions the transport answered Busy itself because the node's request queue was full.";
    match stats {
        Some(stats) => {
            let clients = load(&stats.clients_connected) as i64;
            f.gauge("tricommit_clients_connected", CLIENTS_HELP, clients)?;
            let busy = load(&stats.client_txns_busy_total);
            f.counter("tricommit_transport_busy_transactions", BUSY_HELP, busy)
        }
        // Declared without samples, as the other link families.
        None => {
            f.labelled_gauges("tricommit_clients_connected", CLIENTS_HELP, &[])?;
            f.labelled_counters("tricommit_transport_busy_transactions", BUSY_HELP, &[])
        }
    }
}

/// Link state, reconnects and downs, per peer.
fn encode_link_state(
    links: &[(&str, &PeerStats)],
    f: &mut Families<'_, '_>,
) -> Result<(), std::fmt::Error> {
    let up: Vec<(Labels<'_>, i64)> = links
        .iter()
        .map(|(peer, stats)| {
            let up = stats.up.load(Ordering::Relaxed);
            (vec![("peer", *peer)], i64::from(up))
        })
        .collect();
    f.labelled_gauges(
        "tricommit_link_up",
        "1 while the authenticated connection to the peer is up, else 0.",
        &up,
    )?;
    let reconnects: Vec<(Labels<'_>, u64)> = links
        .iter()
        .map(|(peer, stats)| {
            // Every handshake after the first one re-established the link.
            let connects = load(&stats.connects_total);
            (vec![("peer", *peer)], connects.saturating_sub(1))
        })
        .collect();
    f.labelled_counters(
        "tricommit_link_reconnects",
        "Handshakes with the peer after the first one (the link was re-established).",
        &reconnects,
    )?;
    let mut downs = Vec::new();
    for (peer, stats) in links {
        let all = load(&stats.downs_total);
        let silent = load(&stats.silent_downs_total).min(all);
        downs.push((vec![("peer", *peer), ("cause", "silent")], silent));
        downs.push((vec![("peer", *peer), ("cause", "closed")], all - silent));
    }
    f.labelled_counters(
        "tricommit_link_downs",
        "Times the link went down: the peer was silent too long, or the connection closed.",
        &downs,
    )
}

/// Frames, bytes and dropped frames, per peer.
fn encode_link_traffic(
    links: &[(&str, &PeerStats)],
    f: &mut Families<'_, '_>,
) -> Result<(), std::fmt::Error> {
    let mut frames = Vec::new();
    let mut bytes = Vec::new();
    let mut dropped = Vec::new();
    for (peer, stats) in links {
        let peer = *peer;
        frames.push((
            vec![("peer", peer), ("direction", "sent")],
            load(&stats.frames_out_total),
        ));
        frames.push((
            vec![("peer", peer), ("direction", "received")],
            load(&stats.frames_in_total),
        ));
        bytes.push((
            vec![("peer", peer), ("direction", "sent")],
            load(&stats.bytes_out_total),
        ));
        bytes.push((
            vec![("peer", peer), ("direction", "received")],
            load(&stats.bytes_in_total),
        ));
        for (reason, counter) in [
            ("link_down", &stats.frames_dropped_down_total),
            ("inbox_full", &stats.frames_dropped_inbox_total),
            ("oversized", &stats.parts_dropped_oversized_total),
        ] {
            dropped.push((vec![("peer", peer), ("reason", reason)], load(counter)));
        }
    }
    f.labelled_counters(
        "tricommit_link_frames",
        "Wire frames per link and direction (heartbeats included).",
        &frames,
    )?;
    f.labelled_counters(
        "tricommit_link_bytes",
        "Bytes per link and direction, frame headers and MACs included.",
        &bytes,
    )?;
    f.labelled_counters(
        "tricommit_link_frames_dropped",
        "Site frames toward or from the peer dropped: link down, local inbox full, or a part too large (the protocol retransmits).",
        &dropped,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{AbortReason, BusyReason, Outcome, Priority};
    use crate::proto::Reason;

    fn line<'t>(text: &'t str, prefix: &str) -> &'t str {
        text.lines()
            .find(|line| line.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{text}"))
    }

    #[test]
    fn the_exposition_holds_what_was_recorded_under_conventional_names() {
        // Proves that counters get `_total`, durations are exported in seconds, labels
        // name the sites of the topology, and the text ends with `# EOF` (OpenMetrics).
        let metrics = Arc::new(EngineMetrics::new());
        metrics.set_topology(2, 3);
        metrics.record_outcomes(Outcome::Committed, 5);
        metrics.record_outcomes(Outcome::Aborted(AbortReason::Rejected(Reason::TIMEOUT)), 2);
        metrics.record_busy(Priority::Normal, BusyReason::HighWater);
        metrics.site(3).wal_sync_duration_us.observe(1_500);
        let text = encode_text(&metrics).expect("encodes");
        assert_eq!(
            line(&text, "tricommit_transactions_total{outcome=\"committed\"}"),
            "tricommit_transactions_total{outcome=\"committed\"} 5"
        );
        assert!(text.contains("tricommit_transaction_aborts_total{reason=\"vote_timeout\"} 2"));
        assert!(text.contains(
            "tricommit_admission_rejections_total{priority=\"normal\",reason=\"high_water\"} 1"
        ));
        assert!(
            text.contains("tricommit_wal_sync_duration_seconds_sum{site=\"participant-1\"} 0.0015")
        );
        assert!(text.contains("site=\"replica-1\""));
        assert!(!text.contains("site=\"participant-3\""));
        assert!(text.trim_end().ends_with("# EOF"));
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_at_inf() {
        // Proves the exposition turns per-bucket counts into cumulative `le` buckets
        // whose `+Inf` bucket equals the count.
        let metrics = Arc::new(EngineMetrics::new());
        metrics.set_topology(1, 2);
        for size in [1, 3, 3, 10_000] {
            metrics.batch_txns.observe(size);
        }
        let text = encode_text(&metrics).expect("encodes");
        assert!(text.contains("tricommit_batch_size_transactions_bucket{le=\"1.0\"} 1"));
        assert!(text.contains("tricommit_batch_size_transactions_bucket{le=\"4.0\"} 3"));
        assert!(text.contains("tricommit_batch_size_transactions_bucket{le=\"8192.0\"} 3"));
        assert!(text.contains("tricommit_batch_size_transactions_bucket{le=\"+Inf\"} 4"));
        assert!(text.contains("tricommit_batch_size_transactions_count 4"));
    }

    #[test]
    fn an_attached_transport_is_exported_per_peer_and_evidence_per_participant() {
        // Proves that the link families read the attached transport's own counters,
        // name peers by site (never the node itself), count reconnects as handshakes
        // after the first, and that equivocation evidence is counted per signer.
        let metrics = Arc::new(EngineMetrics::new());
        metrics.set_topology(2, 2);
        let text = encode_text(&metrics).expect("encodes");
        assert!(text.contains("# TYPE tricommit_link_up gauge"));
        assert!(!text.contains("tricommit_link_up{"));
        let stats = Arc::new(crate::transport::TransportStats::new(4));
        let peer = stats.peer(SiteId(2)).expect("a peer");
        peer.up.store(true, Ordering::Relaxed);
        peer.connects_total.store(3, Ordering::Relaxed);
        peer.frames_out_total.store(7, Ordering::Relaxed);
        stats.count_reject(RejectReason::BadMac);
        metrics.attach_transport(stats, SiteId(0));
        metrics.record_equivocation_evidence(crate::proto::BatchId(5), SiteId(3));
        let text = encode_text(&metrics).expect("encodes");
        assert!(text.contains("tricommit_link_up{peer=\"participant-0\"} 1"));
        assert!(text.contains("tricommit_link_up{peer=\"replica-1\"} 0"));
        assert!(!text.contains("peer=\"replica-0\""));
        assert!(text
            .contains("tricommit_link_frames_total{peer=\"participant-0\",direction=\"sent\"} 7"));
        assert!(text.contains("tricommit_link_reconnects_total{peer=\"participant-0\"} 2"));
        assert!(text.contains("tricommit_frames_rejected_total{reason=\"bad_mac\"} 1"));
        assert!(text.contains("tricommit_frames_rejected_total{reason=\"bad_magic\"} 0"));
        assert!(
            text.contains("tricommit_equivocation_evidence_total{participant=\"participant-1\"} 1")
        );
        assert!(
            text.contains("tricommit_equivocation_evidence_total{participant=\"participant-0\"} 0")
        );
    }
}
