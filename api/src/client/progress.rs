//! A one-line download progress bar on stderr, redrawn at most ten times a second.

use std::io::Write;
use std::time::{Duration, Instant};

/// Width of the bar in characters.
const BAR_WIDTH: usize = 30;
/// Least time between redraws.
const REDRAW: Duration = Duration::from_millis(100);

/// The bar; draws nothing unless enabled.
pub struct Progress {
    enabled: bool,
    total: u64,
    done: u64,
    start: Instant,
    last_draw: Option<Instant>,
}

impl Progress {
    /// A bar for `total` bytes, shown only if `enabled` (stderr is a terminal).
    pub fn new(total: u64, enabled: bool) -> Self {
        Self { enabled, total, done: 0, start: Instant::now(), last_draw: None }
    }

    /// `n` more bytes arrived.
    pub fn advance(&mut self, n: u64) {
        self.done += n;
        if self.enabled && self.last_draw.is_none_or(|t| t.elapsed() >= REDRAW) {
            self.draw();
        }
    }

    /// Draws the final state and ends the line.
    pub fn finish(&mut self) {
        if self.enabled {
            self.draw();
            eprintln!();
        }
    }

    fn draw(&mut self) {
        self.last_draw = Some(Instant::now());
        let _ = write!(std::io::stderr(), "\r{}", line(self.done, self.total, self.start.elapsed()));
    }
}

/// `[##########....] 45%  120.0/256.0 MiB  80.0 MiB/s`.
fn line(done: u64, total: u64, elapsed: Duration) -> String {
    let fraction = if total == 0 { 1.0 } else { (done as f64 / total as f64).min(1.0) };
    let filled = (fraction * BAR_WIDTH as f64) as usize;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let rate = mib(done) / elapsed.as_secs_f64().max(0.001);
    format!(
        "[{}{}] {:3.0}%  {:.1}/{:.1} MiB  {rate:.1} MiB/s",
        "#".repeat(filled),
        ".".repeat(BAR_WIDTH - filled),
        fraction * 100.0,
        mib(done),
        mib(total)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_shows_the_fraction() {
        let l = line(512 << 20, 1024 << 20, Duration::from_secs(2));
        assert!(l.starts_with(&format!("[{}{}]  50%", "#".repeat(15), ".".repeat(15))), "{l}");
        assert!(l.ends_with("512.0/1024.0 MiB  256.0 MiB/s"), "{l}");
        assert!(line(0, 0, Duration::ZERO).contains("100%"));
    }
}
