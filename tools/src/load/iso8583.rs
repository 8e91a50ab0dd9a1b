//! `tricommit-load --iso8583 HOST:PORT`: drives a running `tricommit-switch` over TCP
//! with ISO 8583 0200 purchases (pyiso8583 `default_ascii` encoding, 2-byte big-endian
//! framing), one thread per connection, each keeping between half of `--window` and
//! `--window` requests in flight (at most [`WINDOW_ISO8583_MAX`], the switch's
//! per-connection bound), refilled in one write. Latency is
//! measured from the request's write to its response's arrival, matched by STAN.
//!
//! Flags used: `--clients` (connections), `--window`, `--duration`, `--amount-max`,
//! `--seed`, `--json`. The switch should be started with an `--initial-balance` that
//! covers the run, or declines for funds (51) are counted, not approvals.

#[path = "../switch/codec.rs"]
#[allow(dead_code)]
mod codec;

use std::collections::HashMap;
use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde::Serialize;

use codec::Message;

/// Requests one connection keeps in flight at most: the switch's
/// `IN_FLIGHT_PER_CONNECTION_MAX`, so that writes never block on a full switch.
pub const WINDOW_ISO8583_MAX: u64 = 256;
/// The largest response frame accepted.
const FRAME_BYTES_MAX: usize = 8192;
/// How long a connection waits for one response before it gives up.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// STANs are six digits.
const STAN_MAX: u32 = 999_999;
/// Latency histogram bounds, in microseconds.
const LATENCY_US_MAX: u64 = 60_000_000;

/// What one run measured.
#[derive(Debug, Default, Serialize)]
pub struct Iso8583Summary {
    pub address: String,
    pub connections: u64,
    pub window: u64,
    pub duration_s: f64,
    pub requests: u64,
    pub approved: u64,
    pub approved_per_s: f64,
    /// Responses by field 39 code.
    pub codes: std::collections::BTreeMap<String, u64>,
    pub latency_us: Latency,
}

#[derive(Debug, Default, Serialize)]
pub struct Latency {
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

/// Why the run failed.
#[derive(Debug, thiserror::Error)]
pub enum Iso8583Error {
    #[error("connection {index} to {address}: {source}")]
    Connect {
        index: u64,
        address: String,
        source: std::io::Error,
    },
    #[error("connection {index}: {source}")]
    Io { index: u64, source: std::io::Error },
    #[error("connection {index}: {reason}")]
    Protocol { index: u64, reason: String },
    #[error("a connection thread panicked")]
    Panicked,
}

/// One connection's tallies.
struct Tally {
    requests: u64,
    codes: HashMap<[u8; 2], u64>,
    latency: Histogram<u64>,
}

/// Runs the load and prints the summary; returns it for `--json`.
pub fn run(
    address: &str,
    connections: u64,
    window: u64,
    duration: Duration,
    amount_max: u64,
    seed: u64,
) -> Result<Iso8583Summary, Iso8583Error> {
    let window = window.clamp(1, WINDOW_ISO8583_MAX);
    let started = Instant::now();
    let deadline = started + duration;
    // Terminal ids differ between runs (so that a switch that keeps running does not
    // see retransmissions) and between connections.
    let run_tag = (SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| since.as_secs())
        .unwrap_or(0)
        ^ seed)
        % 1000;
    let tallies = thread::scope(|scope| {
        let handles: Vec<_> = (0..connections)
            .map(|index| {
                let terminal = format!("L{run_tag:03}{index:04}");
                scope.spawn(move || {
                    connection(
                        address, index, &terminal, window, deadline, amount_max, seed,
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().map_err(|_| Iso8583Error::Panicked)?)
            .collect::<Result<Vec<_>, _>>()
    })?;
    let elapsed = started.elapsed().as_secs_f64();
    Ok(summarize(address, connections, window, elapsed, tallies))
}

fn summarize(
    address: &str,
    connections: u64,
    window: u64,
    elapsed: f64,
    tallies: Vec<Tally>,
) -> Iso8583Summary {
    let mut latency = Histogram::<u64>::new_with_bounds(1, LATENCY_US_MAX, 3)
        .expect("constant histogram bounds are valid");
    let mut summary = Iso8583Summary {
        address: address.to_owned(),
        connections,
        window,
        duration_s: elapsed,
        ..Iso8583Summary::default()
    };
    for tally in tallies {
        summary.requests += tally.requests;
        for (code, count) in tally.codes {
            *summary
                .codes
                .entry(String::from_utf8_lossy(&code).into_owned())
                .or_default() += count;
        }
        latency
            .add(&tally.latency)
            .expect("histograms with equal bounds add");
    }
    summary.approved = summary.codes.get("00").copied().unwrap_or(0);
    summary.approved_per_s = summary.approved as f64 / elapsed.max(f64::MIN_POSITIVE);
    summary.latency_us = Latency {
        p50: latency.value_at_quantile(0.50),
        p99: latency.value_at_quantile(0.99),
        p999: latency.value_at_quantile(0.999),
        max: latency.max(),
    };
    summary
}

/// Prints the summary as the other modes do: one figure per line.
pub fn print(summary: &Iso8583Summary) {
    println!("iso8583 load on {}", summary.address);
    println!(
        "  connections     {} × window {}",
        summary.connections, summary.window
    );
    println!("  duration        {:.2} s", summary.duration_s);
    println!("  requests        {}", summary.requests);
    println!(
        "  approved        {} ({:.0}/s)",
        summary.approved, summary.approved_per_s
    );
    for (code, count) in &summary.codes {
        println!("  field 39 = {code}  {count}");
    }
    let latency = &summary.latency_us;
    println!(
        "  latency         p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs",
        latency.p50, latency.p99, latency.p999, latency.max
    );
}

/// A small deterministic generator (SplitMix64) for the workload's choices.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut mix = self.0;
        mix = (mix ^ (mix >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        mix = (mix ^ (mix >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        mix ^ (mix >> 31)
    }
}

/// A 16-digit PAN starting with 4 whose last digit is its Luhn check digit.
fn pan(random: &mut Random) -> String {
    let body = format!("4{:014}", random.next() % 100_000_000_000_000);
    let sum: u32 = body
        .bytes()
        .rev()
        .enumerate()
        .map(|(position, digit)| {
            let value = u32::from(digit - b'0');
            match position % 2 {
                0 if value * 2 > 9 => value * 2 - 9,
                0 => value * 2,
                _ => value,
            }
        })
        .sum();
    format!("{body}{}", (10 - sum % 10) % 10)
}

/// Field 7: the transmission date and time, MMDDhhmmss in UTC.
fn transmitted_now() -> String {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| since.as_secs())
        .unwrap_or(0);
    let (days, day_seconds) = (seconds / 86_400, seconds % 86_400);
    let (month, day) = month_day(days);
    format!(
        "{month:02}{day:02}{:02}{:02}{:02}",
        day_seconds / 3600,
        day_seconds / 60 % 60,
        day_seconds % 60
    )
}

/// Month and day of the month of a day count since 1970-01-01 (civil calendar).
fn month_day(days: u64) -> (u64, u64) {
    // Howard Hinnant's days-to-civil algorithm, restricted to dates after 1970.
    let z = days + 719_468;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    (month, day)
}

/// One purchase request, encoded with its frame prefix onto `out`.
fn purchase(
    random: &mut Random,
    terminal: &str,
    stan: u32,
    transmitted: &str,
    amount_max: u64,
    out: &mut Vec<u8>,
) {
    let amount = 1 + random.next() % amount_max;
    let merchant = random.next() % 1_000_000;
    let mut message = Message::new(*b"0200");
    message.set(2, pan(random));
    message.set(3, "000000");
    message.set(4, format!("{amount:012}"));
    message.set(7, transmitted);
    message.set(11, format!("{stan:06}"));
    message.set(12, &transmitted[4..]);
    message.set(13, &transmitted[..4]);
    message.set(37, format!("{stan:012}"));
    message.set(41, terminal);
    message.set(42, format!("{merchant:015}"));
    message.set(49, "840");
    let at = out.len();
    out.extend_from_slice(&[0, 0]);
    codec::encode(&message, out).expect("the load's own fields fit the spec");
    let len = (out.len() - at - 2) as u16;
    out[at..at + 2].copy_from_slice(&len.to_be_bytes());
}

/// One connection: fill the window, refill it whenever half of it is answered, until
/// the deadline; then drain what is in flight.
fn connection(
    address: &str,
    index: u64,
    terminal: &str,
    window: u64,
    deadline: Instant,
    amount_max: u64,
    seed: u64,
) -> Result<Tally, Iso8583Error> {
    let io = |source| Iso8583Error::Io { index, source };
    let stream = TcpStream::connect(address).map_err(|source| Iso8583Error::Connect {
        index,
        address: address.to_owned(),
        source,
    })?;
    stream.set_nodelay(true).map_err(io)?;
    stream
        .set_read_timeout(Some(RESPONSE_TIMEOUT))
        .map_err(io)?;
    let mut writer = stream.try_clone().map_err(io)?;
    let mut reader = BufReader::new(stream);
    let mut random = Random(seed ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03));
    let mut tally = Tally {
        requests: 0,
        codes: HashMap::new(),
        latency: Histogram::new_with_bounds(1, LATENCY_US_MAX, 3)
            .expect("constant histogram bounds are valid"),
    };
    let mut sent: HashMap<u32, Instant> = HashMap::with_capacity(window as usize);
    let mut stan = 0u32;
    let mut batch = Vec::new();
    let mut frame = vec![0u8; FRAME_BYTES_MAX];
    loop {
        let open = Instant::now() < deadline;
        // Refill once half the window is answered: one write carries many requests,
        // instead of one write per response.
        if open && (sent.len() as u64) <= window / 2 {
            let transmitted = transmitted_now();
            batch.clear();
            let now = Instant::now();
            while (sent.len() as u64) < window {
                stan = stan % STAN_MAX + 1;
                purchase(
                    &mut random,
                    terminal,
                    stan,
                    &transmitted,
                    amount_max,
                    &mut batch,
                );
                sent.insert(stan, now);
                tally.requests += 1;
            }
            writer.write_all(&batch).map_err(io)?;
        }
        if sent.is_empty() {
            return Ok(tally);
        }
        let (code, stan_answered) = read_response(&mut reader, &mut frame, index)?;
        let Some(sent_at) = sent.remove(&stan_answered) else {
            return Err(Iso8583Error::Protocol {
                index,
                reason: format!("a response for STAN {stan_answered}, which is not in flight"),
            });
        };
        let micros = sent_at
            .elapsed()
            .as_micros()
            .min(u128::from(LATENCY_US_MAX)) as u64;
        tally.latency.saturating_record(micros.max(1));
        *tally.codes.entry(code).or_default() += 1;
    }
}

/// Reads one 0210 and returns its field 39 and STAN.
fn read_response(
    reader: &mut BufReader<TcpStream>,
    frame: &mut [u8],
    index: u64,
) -> Result<([u8; 2], u32), Iso8583Error> {
    let protocol = |reason: String| Iso8583Error::Protocol { index, reason };
    let mut prefix = [0u8; 2];
    reader
        .read_exact(&mut prefix)
        .map_err(|source| Iso8583Error::Io { index, source })?;
    let len = usize::from(u16::from_be_bytes(prefix));
    let body = frame
        .get_mut(..len)
        .ok_or_else(|| protocol(format!("a response of {len} bytes")))?;
    reader
        .read_exact(body)
        .map_err(|source| Iso8583Error::Io { index, source })?;
    let message = codec::decode(body).map_err(|error| protocol(error.to_string()))?;
    let code = message
        .get(39)
        .and_then(|code| <[u8; 2]>::try_from(code).ok())
        .ok_or_else(|| protocol("a response without field 39".into()))?;
    let stan = message
        .get(11)
        .and_then(|stan| std::str::from_utf8(stan).ok()?.parse().ok())
        .ok_or_else(|| protocol("a response without a STAN".into()))?;
    Ok((code, stan))
}

#[cfg(test)]
mod tests {
    use super::*;

    // The generated PANs pass the Luhn check (the switch would decline them 14).
    #[test]
    fn pans_pass_luhn() {
        let mut random = Random(7);
        for _ in 0..1000 {
            let pan = pan(&mut random);
            let sum: u32 = pan
                .bytes()
                .rev()
                .enumerate()
                .map(|(position, digit)| {
                    let value = u32::from(digit - b'0') * if position % 2 == 1 { 2 } else { 1 };
                    value / 10 + value % 10
                })
                .sum();
            assert_eq!(sum % 10, 0, "{pan}");
        }
    }

    // Day 0 is 1 January and day 20,426 is 4 December 2025 (a leap-year check).
    #[test]
    fn month_day_is_civil() {
        assert_eq!(month_day(0), (1, 1));
        assert_eq!(month_day(20_426), (12, 4));
        assert_eq!(month_day(19_782), (2, 29));
    }
}
