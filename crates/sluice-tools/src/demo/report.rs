//! The "Benefits" table the demo ends with: direct vs through Sluice.

use std::fmt::Write as _;
use std::time::Duration;

use super::workload::RunStats;
use crate::cli::DemoArgs;

/// A duration in milliseconds, or `-` when there is none.
fn ms(d: Option<Duration>) -> String {
    match d {
        Some(d) => format!("{:.1} ms", d.as_secs_f64() * 1000.0),
        None => "-".to_owned(),
    }
}

/// The "Benefits" table.
pub(super) fn benefits(args: &DemoArgs, direct: &RunStats, sluice: &RunStats) -> String {
    let rows = [
        (
            "server connections used (peak)".to_owned(),
            direct.peak_server_connections.to_string(),
            sluice.peak_server_connections.to_string(),
        ),
        (
            "connection acquisition p50".to_owned(),
            ms(direct.acquire_percentile(50)),
            ms(sluice.acquire_percentile(50)),
        ),
        (
            "connection acquisition p99".to_owned(),
            ms(direct.acquire_percentile(99)),
            ms(sluice.acquire_percentile(99)),
        ),
        (
            "throughput".to_owned(),
            format!("{:.0} tx/s", direct.throughput()),
            format!("{:.0} tx/s", sluice.throughput()),
        ),
        (
            "errors".to_owned(),
            direct.errors.to_string(),
            sluice.errors.to_string(),
        ),
    ];
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\nBenefits (measured just now: {} clients × {} transactions, Sluice pool_size {})\n",
        args.clients, args.transactions, args.pool_size
    );
    let _ = writeln!(s, "  {:<32} {:>14} {:>16}", "", "direct", "through Sluice");
    for (what, d, t) in rows {
        let _ = writeln!(s, "  {what:<32} {d:>14} {t:>16}");
    }
    let _ = writeln!(
        s,
        "\nServer connections are PostgreSQL backends (one process and its memory each), \
         counted in pg_stat_activity.\nAcquisition is connect + first query as the client sees it."
    );
    s
}
