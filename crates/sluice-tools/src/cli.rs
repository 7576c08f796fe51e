//! The command line: `sluice-tools demo [options]` and `sluice-tools check [options]`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Sluice's operator tools: see what Sluice does, and verify an installation.
#[derive(Debug, Parser)]
#[command(name = "sluice-tools", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Verify an installation: the configuration, every upstream, a query through Sluice,
    /// /health and /admin/pool-stats. Exit code 1 when a check fails.
    Check(CheckArgs),
    /// See what Sluice does: start a throwaway PostgreSQL (or use --upstream), run the same
    /// many-client workload directly and through Sluice, and compare.
    Demo(DemoArgs),
}

/// Options of `sluice-tools check`.
#[derive(Debug, Args, Default, Clone)]
pub struct CheckArgs {
    /// Configuration file (TOML). Default: $SLUICE_CONFIG, else built-in defaults.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// User to log in to Sluice with (default: the upstream URL's user, or a configured
    /// user with a plaintext password).
    #[arg(long, value_name = "NAME", requires = "password")]
    pub user: Option<String>,
    /// Password for --user.
    #[arg(
        long,
        value_name = "PASSWORD",
        env = "SLUICE_CHECK_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<String>,
}

/// Options of `sluice-tools demo`.
#[derive(Debug, Args, Clone)]
pub struct DemoArgs {
    /// Concurrent clients in each run.
    #[arg(long, default_value_t = 200, value_name = "N")]
    pub clients: usize,
    /// Transactions each client runs (on one connection).
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub transactions: usize,
    /// Sluice's pool_size (server connections) in the run through Sluice.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub pool_size: usize,
    /// Pause between a client's transactions, like an application doing other work.
    #[arg(long, default_value_t = 20, value_name = "MS")]
    pub think_ms: u64,
    /// Use this existing PostgreSQL (postgres://user:password@host:port/db, plaintext)
    /// instead of starting a throwaway cluster. The demo creates a small table
    /// `sluice_demo_accounts` there and drops it at the end.
    #[arg(long, value_name = "URL")]
    pub upstream: Option<String>,
    /// Directory with the PostgreSQL server programs (initdb, pg_ctl, postgres).
    /// Default: `pg_config --bindir`, the newest /usr/lib/postgresql/*/bin, then $PATH.
    #[arg(long, value_name = "DIR", conflicts_with = "upstream")]
    pub pg_bindir: Option<PathBuf>,
}
