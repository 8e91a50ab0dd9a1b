//! Live progress: a bar on a terminal, plain periodic lines otherwise.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use tricommit_engine::runtime::EngineCounters;

/// How often a plain (non-terminal) progress line is printed.
pub const PLAIN_LINE_INTERVAL_MS: u64 = 1_000;
/// A sync in flight at least this long is called out as a stalled disk: the engine is
/// not dead, it is waiting for the disk (a build's writeback, for one).
pub const SYNC_STALL_US: u64 = 1_000_000;

/// The disk's part of a progress line: the age of the oldest WAL sync in flight and the
/// longest sync so far, with a warning while a sync has been in flight for
/// `SYNC_STALL_US` or more, so that a line with 0 committed/s says why.
pub fn sync_status(counters: &EngineCounters) -> String {
    let status = format!(
        "oldest sync in flight {} ms, longest sync {} ms",
        counters.sync_in_flight_us_max / 1_000,
        counters.sync_us_max / 1_000
    );
    if counters.sync_in_flight_us_max >= SYNC_STALL_US {
        format!("DISK STALLED: {status}")
    } else {
        status
    }
}

/// Reports progress of a run of known length.
pub enum Progress {
    Bar(ProgressBar),
    Plain { last_line_ms: u64 },
}

impl Progress {
    /// Picks the bar when stderr is a terminal, plain lines otherwise (CI logs, pipes).
    pub fn new(duration: Duration) -> Progress {
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(duration.as_millis() as u64);
            let style =
                ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            Progress::Bar(bar)
        } else {
            Progress::Plain { last_line_ms: 0 }
        }
    }

    /// Updates the display with the elapsed time and a one-line status.
    pub fn update(&mut self, elapsed: Duration, status: &str) {
        let elapsed_ms = elapsed.as_millis() as u64;
        match self {
            Progress::Bar(bar) => {
                bar.set_position(elapsed_ms);
                bar.set_message(status.to_owned());
            }
            Progress::Plain { last_line_ms } => {
                if elapsed_ms >= *last_line_ms + PLAIN_LINE_INTERVAL_MS {
                    *last_line_ms = elapsed_ms - elapsed_ms % PLAIN_LINE_INTERVAL_MS;
                    eprintln!("[{:>5.1}s] {status}", elapsed.as_secs_f64());
                }
            }
        }
    }

    /// Removes the bar so that the summary prints on a clean screen.
    pub fn finish(self) {
        if let Progress::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the progress line names a stalled disk: the age of the sync in flight and
    // the longest sync are shown, with a warning from SYNC_STALL_US on.
    #[test]
    fn a_stalled_sync_is_named_on_the_progress_line() {
        let quiet = EngineCounters {
            sync_in_flight_us_max: 2_000,
            sync_us_max: 9_000,
            ..EngineCounters::default()
        };
        assert_eq!(
            sync_status(&quiet),
            "oldest sync in flight 2 ms, longest sync 9 ms"
        );
        let stalled = EngineCounters {
            sync_in_flight_us_max: 9_000_000,
            sync_us_max: 9_000,
            ..EngineCounters::default()
        };
        assert_eq!(
            sync_status(&stalled),
            "DISK STALLED: oldest sync in flight 9000 ms, longest sync 9 ms"
        );
    }
}
