//! The link proxy: a user-space relay between every pair of sites, where the chaos
//! runner cuts, delays and drops traffic (`tc netem` is not available on these kernels).
//!
//! The proxy listens at every site's public address (`sites` in cluster.toml) and
//! relays each connection to the site's bind address (`[listen]`). It cuts the byte
//! stream into whole frames (docs/wire-format.md §1: a 32-byte header that names the
//! sender and the receiver, the body, a 16-byte MAC) and looks only at the header, so
//! every fault applies to one *direction of one pair of sites*, whoever dialled:
//! - a **cut** discards every frame from `a` to `b` (a black hole, as a partition is:
//!   no socket closes, and the sites notice through their heartbeats);
//! - a **delay** holds every frame from `a` to `b` for a fixed time (regions);
//! - a **drop** discards a random fraction of site frames; the receiver then sees a
//!   sequence gap and resets the link, as it would after a real loss on a broken path.
//!
//! Client connections (sender or receiver 0xFFFF) are relayed untouched. The proxy
//! never changes a byte it forwards. Frames it cannot parse close the connection.
//!
//! Bounds: at most `CONNECTIONS_MAX` relayed connections, each direction holds at most
//! `FRAMES_QUEUED_MAX` frames in its delay queue (a full queue stops reading, which
//! pushes back on the sender through TCP), and a frame is at most `FRAME_BYTES_MAX`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tricommit_engine::proto::Part;
use tricommit_engine::transport::auth::MAC_BYTES;
use tricommit_engine::transport::codec::decode_parts;
use tricommit_engine::transport::frame::{kind, Header, FRAME_BYTES_MAX, HEADER_BYTES};

/// Relayed connections at once; more are closed at accept.
pub const CONNECTIONS_MAX: usize = 256;
/// Frames one direction of one connection holds in its delay queue.
pub const FRAMES_QUEUED_MAX: usize = 256;
/// How often the accept loops look at the stop flag.
const ACCEPT_POLL_MS: u64 = 10;
/// How long the proxy waits to reach a site behind it.
const UPSTREAM_CONNECT_MS_MAX: u64 = 500;
/// Drop probability is in parts per million.
pub const DROP_PPM_MAX: u32 = 1_000_000;

/// A site id on the wire.
pub type Site = u16;

/// What the proxy does to traffic now. Changing it takes effect on the next frame.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Directed cuts: frames from `.0` to `.1` are discarded.
    pub cut: BTreeSet<(Site, Site)>,
    /// Directed one-way delays, in milliseconds.
    pub delay_ms: BTreeMap<(Site, Site), u64>,
    /// Site frames (kinds SITE and HEARTBEAT) dropped at random, parts per million.
    pub drop_ppm: u32,
    /// Decode site frames' bodies to count their parts by kind and link (costs CPU on
    /// every frame, so only the scenarios that report them turn it on).
    pub count_elections: bool,
}

impl Faults {
    /// Cuts both directions between every site of `a` and every site of `b`.
    pub fn cut_between(&mut self, a: &[Site], b: &[Site]) {
        for &x in a {
            for &y in b {
                self.cut.insert((x, y));
                self.cut.insert((y, x));
            }
        }
    }
}

/// What the proxy saw, for the runner's report.
#[derive(Debug, Default)]
pub struct ProxyCounters {
    pub frames_relayed: AtomicU64,
    pub frames_cut: AtomicU64,
    pub frames_dropped: AtomicU64,
    pub connections: AtomicU64,
    pub connections_refused: AtomicU64,
    /// Protocol parts seen in relayed site frames (the bodies are MACed, not secret):
    /// elections started by a recovery coordinator, and the fencing answers to stale
    /// elections.
    pub elect_parts: AtomicU64,
    pub reject_parts: AtomicU64,
    /// Every part by kind (`Part::name`) and directed link (sender, receiver): whom
    /// fencing refused, and what a stale driver still sends.
    pub parts_by_link: Mutex<BTreeMap<(&'static str, Site, Site), u64>>,
}

impl ProxyCounters {
    /// Parts of kind `name` (`Part::name`: "REJECT", "ROUND", ...) relayed so far to
    /// `site` and from `site`.
    pub fn parts_of(&self, name: &str, site: Site) -> (u64, u64) {
        let links = self.parts_by_link.lock().expect("parts lock");
        let mut to_from = (0, 0);
        for (&(kind, sender, receiver), &count) in links.iter() {
            if kind != name {
                continue;
            }
            if receiver == site {
                to_from.0 += count;
            }
            if sender == site {
                to_from.1 += count;
            }
        }
        to_from
    }
}

struct Shared {
    faults: Mutex<Faults>,
    counters: ProxyCounters,
    stop: AtomicBool,
    /// Every relayed socket, to shut down at stop, with its connection's "ended" flag
    /// (ended connections are dropped from the list at the next accept).
    sockets: Mutex<Vec<(Arc<AtomicBool>, TcpStream)>>,
    live: AtomicU64,
    random: Mutex<u64>,
}

/// The running proxy; stops on drop.
pub struct Proxy {
    shared: Arc<Shared>,
    accepters: Vec<JoinHandle<()>>,
    public: Vec<SocketAddr>,
}

impl Proxy {
    /// Listens on a fresh port of `host` for every `(site, upstream)`, in order;
    /// [`Proxy::public_addrs`] says where.
    pub fn start(host: std::net::IpAddr, upstreams: &[SocketAddr]) -> std::io::Result<Proxy> {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos() as u64)
            ^ u64::from(std::process::id());
        let shared = Arc::new(Shared {
            faults: Mutex::new(Faults::default()),
            counters: ProxyCounters::default(),
            stop: AtomicBool::new(false),
            sockets: Mutex::new(Vec::new()),
            live: AtomicU64::new(0),
            random: Mutex::new(seed | 1),
        });
        let mut proxy = Proxy {
            shared,
            accepters: Vec::new(),
            public: Vec::new(),
        };
        for &upstream in upstreams {
            let listener = TcpListener::bind(SocketAddr::new(host, 0))?;
            listener.set_nonblocking(true)?;
            proxy.public.push(listener.local_addr()?);
            let shared = proxy.shared.clone();
            proxy.accepters.push(std::thread::spawn(move || {
                accept_loop(listener, upstream, &shared)
            }));
        }
        Ok(proxy)
    }

    /// The proxy's address for each upstream, in the order given to `start`.
    pub fn public_addrs(&self) -> &[SocketAddr] {
        &self.public
    }

    /// Replaces the faults.
    pub fn set_faults(&self, faults: Faults) {
        *self.shared.faults.lock().expect("faults lock") = faults;
    }

    /// Changes the faults in place.
    pub fn update(&self, change: impl FnOnce(&mut Faults)) {
        change(&mut self.shared.faults.lock().expect("faults lock"));
    }

    /// Removes every cut and drop; delays stay (they are the topology, not a fault).
    pub fn heal(&self) {
        self.update(|faults| {
            faults.cut.clear();
            faults.drop_ppm = 0;
        });
    }

    pub fn counters(&self) -> &ProxyCounters {
        &self.shared.counters
    }

    fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        for accepter in self.accepters.drain(..) {
            let _ = accepter.join();
        }
        for (_, socket) in self.shared.sockets.lock().expect("sockets lock").drain(..) {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(listener: TcpListener, upstream: SocketAddr, shared: &Arc<Shared>) {
    while !shared.stop.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((downstream, _)) => relay(downstream, upstream, shared),
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(ACCEPT_POLL_MS));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(ACCEPT_POLL_MS)),
        }
    }
}

/// Connects `downstream` to `upstream` through two pumps (one per direction), each a
/// reader and a writer joined by a bounded delay queue.
fn relay(downstream: TcpStream, upstream: SocketAddr, shared: &Arc<Shared>) {
    let counters = &shared.counters;
    if shared.live.load(Ordering::Acquire) as usize >= CONNECTIONS_MAX {
        counters.connections_refused.fetch_add(1, Ordering::Relaxed);
        return;
    }
    // The site behind is down (killed, restarting): close, as a refused dial would.
    let Ok(up) =
        TcpStream::connect_timeout(&upstream, Duration::from_millis(UPSTREAM_CONNECT_MS_MAX))
    else {
        counters.connections_refused.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let sockets = (|| -> std::io::Result<_> {
        downstream.set_nonblocking(false)?;
        downstream.set_nodelay(true)?;
        up.set_nodelay(true)?;
        Ok((
            downstream.try_clone()?,
            up.try_clone()?,
            downstream.try_clone()?,
            up.try_clone()?,
        ))
    })();
    let Ok((down_read, up_read, down_keep, up_keep)) = sockets else {
        return;
    };
    counters.connections.fetch_add(1, Ordering::Relaxed);
    shared.live.fetch_add(2, Ordering::AcqRel);
    let ended = Arc::new(AtomicBool::new(false));
    {
        let mut registry = shared.sockets.lock().expect("sockets lock");
        // Ended connections' sockets are shut already; dropping them closes them.
        registry.retain(|(ended, _)| !ended.load(Ordering::Acquire));
        registry.push((ended.clone(), down_keep));
        registry.push((ended.clone(), up_keep));
    }
    spawn_pump(down_read, up, shared.clone(), ended.clone());
    spawn_pump(up_read, downstream, shared.clone(), ended);
}

/// One direction: `from` is read frame by frame, `to` written after each frame's delay.
fn spawn_pump(from: TcpStream, to: TcpStream, shared: Arc<Shared>, ended: Arc<AtomicBool>) {
    let (queue, frames) = mpsc::sync_channel::<(Instant, Vec<u8>)>(FRAMES_QUEUED_MAX);
    let writer_to = to.try_clone();
    let reader_shared = shared.clone();
    std::thread::spawn(move || {
        read_frames(&from, &queue, &reader_shared);
        drop(queue);
        // Either direction ending ends the connection: shut it, so the other pump ends.
        let _ = from.shutdown(Shutdown::Both);
        ended.store(true, Ordering::Release);
        reader_shared.live.fetch_sub(1, Ordering::AcqRel);
    });
    std::thread::spawn(move || {
        if let Ok(mut to) = writer_to {
            for (due, frame) in frames {
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                if to.write_all(&frame).is_err() {
                    break;
                }
            }
            let _ = to.shutdown(Shutdown::Both);
        }
        drop(shared);
    });
}

/// Reads whole frames until the stream ends, an unparsable header arrives or the proxy
/// stops; queues each one that the faults let through.
fn read_frames(
    mut from: &TcpStream,
    queue: &mpsc::SyncSender<(Instant, Vec<u8>)>,
    shared: &Shared,
) {
    let mut header_bytes = [0u8; HEADER_BYTES];
    while !shared.stop.load(Ordering::Acquire) {
        if from.read_exact(&mut header_bytes).is_err() {
            return;
        }
        let Ok(header) = Header::decode(&header_bytes) else {
            return;
        };
        let total = HEADER_BYTES + header.body_len as usize + MAC_BYTES;
        debug_assert!(total <= FRAME_BYTES_MAX);
        let mut frame = vec![0u8; total];
        frame[..HEADER_BYTES].copy_from_slice(&header_bytes);
        if from.read_exact(&mut frame[HEADER_BYTES..]).is_err() {
            return;
        }
        let Some(delay_ms) = verdict(&header, &frame, shared) else {
            continue;
        };
        let due = Instant::now() + Duration::from_millis(delay_ms);
        if queue.send((due, frame)).is_err() {
            return;
        }
    }
}

/// `None` to discard the frame, or its delay.
fn verdict(header: &Header, frame: &[u8], shared: &Shared) -> Option<u64> {
    let counters = &shared.counters;
    let client = header.sender == 0xffff || header.receiver == 0xffff;
    if client {
        counters.frames_relayed.fetch_add(1, Ordering::Relaxed);
        return Some(0);
    }
    let pair = (header.sender, header.receiver);
    let (cut, delay_ms, drop_ppm, count_elections) = {
        let faults = shared.faults.lock().expect("faults lock");
        (
            faults.cut.contains(&pair),
            faults.delay_ms.get(&pair).copied().unwrap_or(0),
            faults.drop_ppm,
            faults.count_elections,
        )
    };
    if cut {
        counters.frames_cut.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    let droppable = header.kind == kind::SITE || header.kind == kind::HEARTBEAT;
    if droppable
        && drop_ppm > 0
        && (next_random(shared) % u64::from(DROP_PPM_MAX)) < u64::from(drop_ppm)
    {
        counters.frames_dropped.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    if count_elections && header.kind == kind::SITE {
        count_parts(
            &frame[HEADER_BYTES..frame.len() - MAC_BYTES],
            pair,
            counters,
        );
    }
    counters.frames_relayed.fetch_add(1, Ordering::Relaxed);
    Some(delay_ms)
}

/// Counts the parts of a site frame's body, sent on `link`: by kind and link, and the
/// election and fencing parts in total.
fn count_parts(body: &[u8], link: (Site, Site), counters: &ProxyCounters) {
    let Ok(parts) = decode_parts(body) else {
        return;
    };
    for part in &parts {
        match part {
            Part::Elect { .. } => counters.elect_parts.fetch_add(1, Ordering::Relaxed),
            Part::Reject { .. } => counters.reject_parts.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
    }
    let mut links = counters.parts_by_link.lock().expect("parts lock");
    for part in &parts {
        *links.entry((part.name(), link.0, link.1)).or_default() += 1;
    }
}

/// xorshift64*: good enough to pick frames to drop.
fn next_random(shared: &Shared) -> u64 {
    let mut state = shared.random.lock().expect("random lock");
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame from `sender` to `receiver` with an empty body (a heartbeat; the MAC
    /// bytes are zero: the proxy never checks them) and `sequence` as a tag.
    fn frame(sender: Site, receiver: Site, sequence: u64) -> Vec<u8> {
        let header = Header {
            kind: kind::HEARTBEAT,
            body_len: 0,
            sender,
            receiver,
            cluster_id: 7,
            sequence,
        };
        let mut bytes = [0u8; HEADER_BYTES];
        header.encode(&mut bytes);
        let mut frame = bytes.to_vec();
        frame.extend_from_slice(&[0u8; MAC_BYTES]);
        frame
    }

    fn read_sequence(stream: &mut TcpStream) -> u64 {
        let mut bytes = [0u8; HEADER_BYTES + MAC_BYTES];
        stream.read_exact(&mut bytes).expect("a frame");
        let header = Header::decode(bytes[..HEADER_BYTES].try_into().unwrap()).unwrap();
        header.sequence
    }

    #[test]
    fn a_cut_discards_whole_frames_of_one_direction_only_until_healed() {
        // Proves that the proxy relays frames unchanged, that a cut of 1 -> 2 discards
        // exactly those frames (and not 3 -> 2's), and that healing restores the link.
        let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
        let proxy = Proxy::start(
            "127.0.0.1".parse().unwrap(),
            &[upstream.local_addr().unwrap()],
        )
        .unwrap();
        let mut dialer = TcpStream::connect(proxy.public_addrs()[0]).unwrap();
        let (mut site, _) = upstream.accept().unwrap();
        site.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        dialer.write_all(&frame(1, 2, 10)).unwrap();
        assert_eq!(read_sequence(&mut site), 10);
        proxy.update(|faults| {
            faults.cut.insert((1, 2));
        });
        dialer.write_all(&frame(1, 2, 11)).unwrap();
        dialer.write_all(&frame(3, 2, 12)).unwrap();
        // Frames are read in order: once 12 arrived, 11 was judged (and discarded).
        assert_eq!(read_sequence(&mut site), 12);
        proxy.heal();
        dialer.write_all(&frame(1, 2, 13)).unwrap();
        assert_eq!(read_sequence(&mut site), 13);
        // The other direction was never cut.
        site.write_all(&frame(2, 1, 14)).unwrap();
        dialer
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        assert_eq!(read_sequence(&mut dialer), 14);
        assert_eq!(proxy.counters().frames_cut.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn garbage_closes_the_connection() {
        // Proves that bytes that are not a frame end the relay instead of being passed on.
        let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
        let proxy = Proxy::start(
            "127.0.0.1".parse().unwrap(),
            &[upstream.local_addr().unwrap()],
        )
        .unwrap();
        let mut dialer = TcpStream::connect(proxy.public_addrs()[0]).unwrap();
        let (mut site, _) = upstream.accept().unwrap();
        site.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        dialer.write_all(&[0xAB; HEADER_BYTES]).unwrap();
        let mut byte = [0u8; 1];
        assert_eq!(site.read(&mut byte).unwrap(), 0, "the relay closed");
    }

    #[test]
    fn reject_parts_are_counted_per_link() {
        // Proves that the part counter finds REJECT and ELECT parts in a frame body and
        // books each part by kind on its directed link, so the runner can tell whom
        // fencing refused; a body that does not decode counts nothing.
        use tricommit_engine::proto::BatchId;
        use tricommit_engine::transport::codec::encode_parts;
        let counters = ProxyCounters::default();
        let mut body = Vec::new();
        let reject = Part::Reject {
            batch: BatchId(7),
            elected: 2,
        };
        encode_parts(&[reject.clone(), reject], &mut body);
        count_parts(&body, (4, 0), &counters);
        count_parts(&[0xAB; 3], (0, 4), &counters);
        assert_eq!(counters.reject_parts.load(Ordering::Relaxed), 2);
        assert_eq!(counters.elect_parts.load(Ordering::Relaxed), 0);
        assert_eq!(counters.parts_of("REJECT", 0), (2, 0));
        assert_eq!(counters.parts_of("REJECT", 4), (0, 2));
        assert_eq!(counters.parts_of("REJECT", 5), (0, 0));
        assert_eq!(counters.parts_of("ROUND", 0), (0, 0));
    }
}
