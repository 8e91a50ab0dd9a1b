//! Live progress: a bar on a terminal, plain periodic lines otherwise.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// How often a plain (non-terminal) progress line is printed.
pub const PLAIN_LINE_INTERVAL_MS: u64 = 1_000;

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
