//! Sluice's operator tools, kept out of the proxy binary: `sluice-tools demo` starts a
//! throwaway PostgreSQL and measures what pooling changes; `sluice-tools check` verifies an
//! installation. Both start Sluice in-process through [`sluice::run`]. `main.rs` is a thin
//! shim over [`cli_main`], so the end-to-end test crate builds the very same program.

#![forbid(unsafe_code)]

mod check;
mod cli;
mod demo;
mod in_process;
mod pg;

use std::process::ExitCode;

pub use cli::{CheckArgs, Cli, Command, DemoArgs};

/// Runs the `sluice-tools` command line program and returns its exit code.
pub fn cli_main() -> ExitCode {
    let cli = <Cli as clap::Parser>::parse();
    // Sluice's own log lines would tear the demo's progress bars and the check's ✓/✗
    // lines: errors only.
    sluice::init_tracing("error");
    match cli.command {
        Command::Demo(args) => {
            sluice::raise_fd_limit();
            sluice::with_runtime(demo::main(args))
        }
        Command::Check(args) => sluice::with_runtime(check::main(args)),
    }
}
