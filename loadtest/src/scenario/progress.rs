//! Progress on stderr while a scenario runs.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Progress on stderr: a bar while connecting, a status line while publishing. Hidden when
/// stderr is not a terminal or with `--quiet`.
pub struct Progress {
    pub(super) bar: ProgressBar,
    quiet: bool,
}

impl Progress {
    /// A progress display.
    pub fn new(quiet: bool) -> Self {
        let bar = if quiet || !std::io::stderr().is_terminal() {
            ProgressBar::hidden()
        } else {
            let b = ProgressBar::new(0);
            b.set_draw_target(ProgressDrawTarget::stderr_with_hz(5));
            b
        };
        Self { bar, quiet }
    }

    pub(super) fn counting(&self, len: u64, what: &str) {
        if let Ok(style) =
            ProgressStyle::with_template("{spinner} {elapsed:>4} {bar:30} {pos}/{len} {msg}")
        {
            self.bar.set_style(style);
        }
        self.bar.set_length(len);
        self.bar.set_position(0);
        self.bar.set_message(what.to_owned());
    }

    pub(super) fn status(&self, msg: String) {
        if let Ok(style) = ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}") {
            self.bar.set_style(style);
        }
        self.bar.set_message(msg);
    }

    /// A phase message (suppressed by `--quiet`).
    pub fn say(&self, msg: &str) {
        if !self.quiet {
            self.bar.suspend(|| eprintln!("{msg}"));
        }
    }

    pub(super) fn done(&self) {
        self.bar.finish_and_clear();
    }
}
