//! The command line: `sluice [run] [--config FILE] [overrides]`, plus `sluice health`.
//! Flags override the environment, which overrides the file, which overrides built-in
//! defaults. (`demo` and `check` live in the `sluice-tools` program.)

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use sluice_config::{Config, ConfigError};

/// Sluice, a connection-pooling proxy for PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about)]
pub struct Cli {
    /// What to do (default: run).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Options of `run`, also accepted without the subcommand.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy (the default).
    Run(RunArgs),
    /// GET /health of the admin listener; exit 0 when healthy (for container HEALTHCHECKs).
    Health(HealthArgs),
    /// Print the proxy.toml equivalent to a pgbouncer.ini (unsupported keys as comments).
    ImportPgbouncer(ImportArgs),
    /// Moved: `sluice-tools check` (says so and exits 2).
    #[command(hide = true, disable_help_flag = true)]
    Check(MovedArgs),
    /// Moved: `sluice-tools demo` (says so and exits 2).
    #[command(hide = true, disable_help_flag = true)]
    Demo(MovedArgs),
}

/// The arguments of a subcommand that moved to `sluice-tools`, taken as they come so the
/// pointer to the new program is what the user sees.
#[derive(Debug, Args, Clone)]
pub struct MovedArgs {
    /// Whatever followed the subcommand.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    pub args: Vec<String>,
}

/// Options of `sluice import-pgbouncer`.
#[derive(Debug, Args, Clone)]
pub struct ImportArgs {
    /// The pgbouncer.ini to convert.
    #[arg(value_name = "PGBOUNCER_INI")]
    pub ini: PathBuf,
    /// The userlist.txt to use as `postgres.auth_file` (default: the ini's auth_file).
    #[arg(long, value_name = "FILE")]
    pub userlist: Option<PathBuf>,
}

/// Options of `sluice health`.
#[derive(Debug, Args, Default, Clone)]
pub struct HealthArgs {
    /// Configuration file whose admin.listen to ask. Default: $SLUICE_CONFIG.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Admin listener address (ip:port); overrides the configuration.
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<std::net::SocketAddr>,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 3, value_name = "SECONDS")]
    pub timeout: u64,
}

/// Options of `sluice run`.
#[derive(Debug, Args, Default, Clone)]
pub struct RunArgs {
    /// Configuration file (TOML). Default: $SLUICE_CONFIG, else built-in defaults.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Override postgres.listen (address:port).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Override postgres.pool_mode (session | transaction).
    #[arg(long, value_name = "MODE")]
    pub pool_mode: Option<String>,
    /// Override postgres.pool_size.
    #[arg(long, value_name = "N")]
    pub pool_size: Option<String>,
    /// Override postgres.min_pool_size.
    #[arg(long, value_name = "N")]
    pub min_pool_size: Option<String>,
    /// Override postgres.pool_timeout (e.g. 30s, 0.5).
    #[arg(long, value_name = "DURATION")]
    pub pool_timeout: Option<String>,
    /// Override postgres.max_client_conn.
    #[arg(long, value_name = "N")]
    pub max_client_conn: Option<String>,
    /// Override admin.listen (address:port of the HTTP admin listener).
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<String>,
    /// Override general.shutdown_timeout.
    #[arg(long, value_name = "DURATION")]
    pub shutdown_timeout: Option<String>,
}

impl Cli {
    /// Loads the configuration with all precedence layers applied.
    pub fn load_config(&self) -> Result<Config, ConfigError> {
        let args = match &self.command {
            Some(Command::Run(args)) => args,
            _ => &self.run,
        };
        let mut overrides = Vec::new();
        for (key, value) in [
            ("postgres.listen", &args.listen),
            ("postgres.pool_mode", &args.pool_mode),
            ("postgres.pool_size", &args.pool_size),
            ("postgres.min_pool_size", &args.min_pool_size),
            ("postgres.pool_timeout", &args.pool_timeout),
            ("postgres.max_client_conn", &args.max_client_conn),
            ("general.shutdown_timeout", &args.shutdown_timeout),
            ("admin.listen", &args.admin_listen),
        ] {
            if let Some(v) = value {
                overrides.push((key, v.clone()));
            }
        }
        Config::load(
            args.config.as_deref(),
            &|k| std::env::var(k).ok(),
            &overrides,
        )
    }
}
