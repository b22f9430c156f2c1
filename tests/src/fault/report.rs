//! The reliability table: one [`Counts`] row per scenario (published, confirmed, lost,
//! duplicated…), printed, appended to `$FAULT_REPORT` and checked for losses.

use std::collections::HashMap;

use super::{Published, Scale, scale};

/// One row of the reliability table.
#[derive(Debug, Clone)]
pub struct Counts {
    /// The scenario (`worker crash, Redis`).
    pub scenario: String,
    /// What was done (`200 msgs, 50 ms handler, kill -9 at 25 %`).
    pub what: String,
    /// Publishes attempted.
    pub published: usize,
    /// Publishes that returned `Ok`.
    pub confirmed: usize,
    /// Publishes that returned `Err` (reported to the publisher).
    pub failed: usize,
    /// Distinct messages whose handler ran.
    pub processed: usize,
    /// Confirmed messages never processed: must be 0.
    pub lost: usize,
    /// Messages processed more than once.
    pub duplicated: usize,
    /// Failed publishes whose message was processed anyway (the broker had it; allowed).
    pub failed_but_processed: usize,
    /// The command that reproduces the row.
    pub command: String,
}

impl Counts {
    /// Counts `published` against the handler runs `runs`.
    pub fn new(
        scenario: &str,
        what: &str,
        published: &Published,
        runs: &HashMap<u64, u64>,
        command: &str,
    ) -> Self {
        Self {
            scenario: scenario.to_owned(),
            what: what.to_owned(),
            published: published.attempted(),
            confirmed: published.confirmed.len(),
            failed: published.failed.len(),
            processed: runs.len(),
            lost: published
                .confirmed
                .iter()
                .filter(|seq| !runs.contains_key(seq))
                .count(),
            duplicated: runs.values().filter(|&&n| n > 1).count(),
            failed_but_processed: published
                .failed
                .iter()
                .filter(|seq| runs.contains_key(seq))
                .count(),
            command: command.to_owned(),
        }
    }

    /// The markdown row.
    pub fn row(&self) -> String {
        format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | `{}` |",
            self.scenario,
            self.what,
            self.published,
            self.confirmed,
            if self.failed_but_processed > 0 {
                format!(
                    "{} ({} of them processed anyway)",
                    self.failed, self.failed_but_processed
                )
            } else {
                self.failed.to_string()
            },
            self.processed,
            self.lost,
            self.duplicated,
            self.command
        )
    }

    /// Prints the row, appends it to `$FAULT_REPORT` when set, and asserts that nothing
    /// confirmed was lost.
    pub fn report(&self) {
        let row = self.row();
        eprintln!("{row}");
        if let Some(path) = std::env::var_os("FAULT_REPORT").filter(|p| !p.is_empty()) {
            use std::io::Write;
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .expect("open FAULT_REPORT");
            writeln!(file, "{row}").expect("write FAULT_REPORT");
        }
        assert_eq!(self.lost, 0, "confirmed messages were lost: {row}");
        assert!(self.confirmed > 0, "nothing was confirmed: {row}");
    }
}

/// The reproduce command of a test in `tests/tests/<file>.rs`.
pub fn command(file: &str, test: &str) -> String {
    let scale = match scale() {
        Scale::Quick => "",
        Scale::Full => "FAULT_SCALE=full ",
    };
    format!("{scale}cargo test -p tests --test {file} -- --exact {test}")
}
