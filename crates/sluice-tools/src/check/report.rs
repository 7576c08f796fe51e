//! The ✓/✗ lines of `sluice-tools check`, and its exit code.

use std::process::ExitCode;

/// The ✓/✗ lines printed so far, and the failures among them.
#[derive(Default)]
pub(super) struct Report {
    failures: Vec<String>,
}

impl Report {
    /// Prints a passed check.
    pub(super) fn ok(&mut self, line: impl AsRef<str>) {
        println!("✓ {}", line.as_ref());
    }

    /// Prints a failed check and remembers it for the summary.
    pub(super) fn fail(&mut self, line: impl Into<String>) {
        let line = line.into();
        println!("✗ {line}");
        self.failures.push(line);
    }

    /// Prints a line that is neither (what was done, or not checked).
    pub(super) fn note(&mut self, line: impl AsRef<str>) {
        println!("· {}", line.as_ref());
    }

    /// Prints the summary: success when nothing failed, else the failures and exit 1.
    pub(super) fn finish(self) -> ExitCode {
        if self.failures.is_empty() {
            println!("✓ All checks passed");
            ExitCode::SUCCESS
        } else {
            println!("✗ {} check(s) failed:", self.failures.len());
            for f in &self.failures {
                println!("    {f}");
            }
            ExitCode::FAILURE
        }
    }
}
