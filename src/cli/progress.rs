//! Progress display of the client commands (`put`, `images`): an
//! [indicatif](https://docs.rs/indicatif) bar on standard error when it is a terminal,
//! nothing at all when it is not (a pipe, a file, a journal), so scripts and logs get
//! only the messages and the final summary. Messages printed while a bar is shown go
//! above it instead of through it. Why indicatif: docs/design/cli-progress.md.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress display; hidden when standard error is not a terminal.
#[derive(Debug, Clone)]
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    fn new(bar: ProgressBar, template: &str, visible: bool) -> Self {
        let style = ProgressStyle::with_template(template)
            .expect("static template")
            .progress_chars("=> ");
        bar.set_style(style);
        bar.set_draw_target(if visible {
            ProgressDrawTarget::stderr_with_hz(4)
        } else {
            ProgressDrawTarget::hidden()
        });
        if visible {
            bar.enable_steady_tick(Duration::from_millis(250));
        }
        Self { bar }
    }

    fn visible() -> bool {
        std::io::stderr().is_terminal()
    }

    /// `put`: bytes sent and their rate; the message carries fragments and ack latency.
    pub fn upload() -> Self {
        Self::new(
            ProgressBar::no_length(),
            "{spinner} {bytes} sent ({binary_bytes_per_sec}) {msg} [{elapsed}]",
            Self::visible(),
        )
    }

    /// `images`: `total` instants; the message carries the written/missing counts.
    pub fn instants(total: u64) -> Self {
        Self::new(
            ProgressBar::new(total),
            "[{bar:30}] {pos}/{len} instants ({per_sec}) {msg} [{elapsed}, {eta} left]",
            Self::visible(),
        )
    }

    /// Whether anything is drawn.
    pub fn is_shown(&self) -> bool {
        !self.bar.is_hidden()
    }

    pub fn set_position(&self, n: u64) {
        self.bar.set_position(n);
    }

    pub fn set_message(&self, msg: String) {
        self.bar.set_message(msg);
    }

    /// Prints a line to standard error, above the bar when one is shown.
    pub fn println(&self, line: &str) {
        self.bar.suspend(|| eprintln!("{line}"));
    }

    /// Removes the bar (the caller prints its own summary).
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_when_not_a_terminal() {
        // Test runs capture stderr, so it is not a terminal here.
        if std::io::stderr().is_terminal() {
            return;
        }
        let p = Progress::upload();
        assert!(!p.is_shown());
        p.set_position(10);
        p.set_message("x".into());
        p.finish();
        assert!(!Progress::instants(3).is_shown());
    }
}
