//! `SHOW HOSTS` (Sluice's own): each host of every database that has several, with its
//! configured and current role, how long it stays banned, its replication lag at the last
//! health check and the last error.

use super::tables::ResultSet;
use crate::context::PgContext;

/// One row per host of each multi-host database, in database then host order.
pub(super) fn hosts(ctx: &PgContext) -> ResultSet {
    let mut rs = ResultSet::new(&[
        "database",
        "host",
        "configured_role",
        "role",
        "banned_for",
        "lag",
        "last_error",
    ]);
    for (name, db) in ctx.all_databases() {
        for h in db.host_report().unwrap_or_default() {
            rs.row(vec![
                name.clone(),
                h.address,
                h.configured.to_string(),
                h.role.as_str().to_owned(),
                format!("{:.1}", h.banned_for),
                h.lag.map(|l| format!("{l:.1}")).unwrap_or_default(),
                h.last_error.unwrap_or_default(),
            ]);
        }
    }
    rs
}
