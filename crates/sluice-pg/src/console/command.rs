//! Parsing of admin console statements (case-insensitive, optional trailing `;`).

/// What `SHOW` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    /// Per-pool client and server counts.
    Pools,
    /// Per-pool totals.
    Stats,
    /// Connected clients.
    Clients,
    /// Server connections.
    Servers,
    /// Configured databases.
    Databases,
    /// Settings in force.
    Config,
    /// Sluice's version.
    Version,
    /// Users clients may log in as.
    Users,
    /// Counts of Sluice's internal lists (databases, users, pools, clients, servers).
    Lists,
    /// What holds memory: clients, buffers, statement registries, caches, the process.
    Mem,
    /// The hosts of databases with several (Sluice's own): role, ban, lag.
    Hosts,
}

/// A console statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// An empty query string.
    Empty,
    /// `SHOW ...`.
    Show(Show),
    /// `RELOAD`.
    Reload,
    /// `PAUSE [db]`.
    Pause(Option<String>),
    /// `RESUME [db]`.
    Resume(Option<String>),
    /// `SHUTDOWN`.
    Shutdown,
    /// `KILL db`: disconnect every client of a database, close its servers, pause it.
    Kill(String),
    /// `KILL_CLIENT id`: disconnect one client (its `id` in `SHOW CLIENTS`).
    KillClient(u64),
}

/// Parses one statement; the error text lists what is supported.
pub fn parse(sql: &str) -> Result<Command, String> {
    let sql = sql.trim().trim_end_matches(';').trim();
    let words: Vec<String> = sql
        .split_whitespace()
        .map(str::to_ascii_uppercase)
        .collect();
    let arg = || {
        sql.split_whitespace()
            .nth(1)
            .map(|s| s.trim_matches('"').to_owned())
    };
    let cmd = match words
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] => Command::Empty,
        ["SHOW", what] => Command::Show(match *what {
            "POOLS" => Show::Pools,
            "STATS" => Show::Stats,
            "CLIENTS" => Show::Clients,
            "SERVERS" => Show::Servers,
            "DATABASES" => Show::Databases,
            "CONFIG" => Show::Config,
            "VERSION" => Show::Version,
            "USERS" => Show::Users,
            "LISTS" => Show::Lists,
            "MEM" => Show::Mem,
            "HOSTS" => Show::Hosts,
            _ => return Err(unsupported(sql)),
        }),
        ["RELOAD"] => Command::Reload,
        ["PAUSE"] => Command::Pause(None),
        ["PAUSE", _] => Command::Pause(arg()),
        ["RESUME"] => Command::Resume(None),
        ["RESUME", _] => Command::Resume(arg()),
        ["SHUTDOWN"] => Command::Shutdown,
        ["KILL", _] => Command::Kill(arg().unwrap_or_default()),
        ["KILL_CLIENT", id] => match id.parse() {
            Ok(id) => Command::KillClient(id),
            Err(_) => {
                return Err(format!(
                    "KILL_CLIENT takes a client id (SHOW CLIENTS): {id}"
                ))
            }
        },
        _ => return Err(unsupported(sql)),
    };
    Ok(cmd)
}

fn unsupported(sql: &str) -> String {
    format!(
        "unsupported admin command \"{sql}\": use SHOW POOLS|STATS|CLIENTS|SERVERS|DATABASES|USERS|LISTS|MEM|HOSTS|CONFIG|VERSION, \
         RELOAD, PAUSE [db], RESUME [db], KILL db, KILL_CLIENT id or SHUTDOWN"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands() {
        assert_eq!(parse("show pools;"), Ok(Command::Show(Show::Pools)));
        assert_eq!(parse("SHOW   stats"), Ok(Command::Show(Show::Stats)));
        assert_eq!(parse("pause app"), Ok(Command::Pause(Some("app".into()))));
        assert_eq!(parse("KILL app;"), Ok(Command::Kill("app".into())));
        assert_eq!(parse("kill_client 42"), Ok(Command::KillClient(42)));
        assert!(parse("KILL_CLIENT x").is_err());
        assert_eq!(parse("show mem"), Ok(Command::Show(Show::Mem)));
        assert_eq!(parse("RESUME"), Ok(Command::Resume(None)));
        assert_eq!(parse(""), Ok(Command::Empty));
        assert_eq!(parse("show lists"), Ok(Command::Show(Show::Lists)));
        assert_eq!(parse("SHOW USERS"), Ok(Command::Show(Show::Users)));
        assert!(parse("show fds").is_err());
        assert!(parse("select 1").is_err());
    }
}
