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
            _ => return Err(unsupported(sql)),
        }),
        ["RELOAD"] => Command::Reload,
        ["PAUSE"] => Command::Pause(None),
        ["PAUSE", _] => Command::Pause(arg()),
        ["RESUME"] => Command::Resume(None),
        ["RESUME", _] => Command::Resume(arg()),
        ["SHUTDOWN"] => Command::Shutdown,
        _ => return Err(unsupported(sql)),
    };
    Ok(cmd)
}

fn unsupported(sql: &str) -> String {
    format!(
        "unsupported admin command \"{sql}\": use SHOW POOLS|STATS|CLIENTS|SERVERS|DATABASES|USERS|LISTS|CONFIG|VERSION, \
         RELOAD, PAUSE [db], RESUME [db] or SHUTDOWN"
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
        assert_eq!(parse("RESUME"), Ok(Command::Resume(None)));
        assert_eq!(parse(""), Ok(Command::Empty));
        assert_eq!(parse("show lists"), Ok(Command::Show(Show::Lists)));
        assert_eq!(parse("SHOW USERS"), Ok(Command::Show(Show::Users)));
        assert!(parse("show mem").is_err());
        assert!(parse("select 1").is_err());
    }
}
