//! Session state that must follow a client across server connections (its settings and
//! prepared statements), and the matching state each server connection carries.

use std::collections::HashMap;
use std::sync::Arc;

use crate::prepared::{ServerStatements, Statement};

/// A small map of setting name → value, kept as a sorted vector (a session has a handful
/// of settings, and a `BTreeMap` node would cost ~0.5 KiB per idle client) and shared
/// copy-on-write: a client's startup settings, its current settings, the settings of the
/// server it lands on, and every other client that sent the same startup packet all point
/// at one allocation until one of them changes.
#[derive(Debug, Default, Clone, Eq)]
pub struct Settings(Arc<Vec<(String, String)>>);

impl PartialEq for Settings {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

impl Settings {
    fn find(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(name))
    }

    /// The value of `name`.
    pub fn get(&self, name: &str) -> Option<&String> {
        self.find(name).ok().map(|i| &self.0[i].1)
    }

    /// True if `name` is set.
    pub fn contains_key(&self, name: &str) -> bool {
        self.find(name).is_ok()
    }

    /// Sets `name` to `value`.
    pub fn insert(&mut self, name: String, value: String) {
        match self.find(&name) {
            Ok(i) if self.0[i].1 == value => {}
            Ok(i) => Arc::make_mut(&mut self.0)[i].1 = value,
            Err(i) => Arc::make_mut(&mut self.0).insert(i, (name, value)),
        }
    }

    /// Unsets `name`.
    pub fn remove(&mut self, name: &str) {
        if let Ok(i) = self.find(name) {
            Arc::make_mut(&mut self.0).remove(i);
        }
    }

    /// Unsets everything.
    pub fn clear(&mut self) {
        if !self.0.is_empty() {
            self.0 = Arc::default();
        }
    }

    /// Number of settings.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True if none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Names, in order.
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.0.iter().map(|(k, _)| k)
    }

    /// (name, value) pairs, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

/// Startup parameters that are not settings.
const NOT_SETTINGS: &[&str] = &["user", "database", "options", "replication"];

/// What one client believes its session looks like.
#[derive(Debug, Default)]
pub struct ClientState {
    /// Settings (lower-case name → value) the client's session has beyond server defaults.
    pub settings: Settings,
    /// The settings from the client's startup packet (what `RESET` returns to).
    pub startup: Settings,
    /// The client's named prepared statements.
    pub statements: HashMap<String, Arc<Statement>>,
}

impl ClientState {
    /// Builds the state from StartupMessage parameters: every parameter that is a setting
    /// (application_name, DateStyle, ...) plus `-c name=value` / `--name=value` in `options`.
    pub fn from_startup(params: &[(String, String)]) -> Self {
        let mut startup = Settings::default();
        for (name, value) in params {
            if name == "options" {
                for (n, v) in parse_options(value) {
                    if let Some(n) = setting_name(&n) {
                        startup.insert(n, v);
                    }
                }
            } else if !NOT_SETTINGS.contains(&name.as_str()) && !name.starts_with("_pq_.") {
                if let Some(n) = setting_name(name) {
                    startup.insert(n, value.clone());
                }
            }
        }
        // PostgreSQL's default is an empty application_name; without this a client would
        // see whatever the previous client on that server set.
        if !startup.contains_key("application_name") {
            startup.insert("application_name".to_owned(), String::new());
        }
        Self {
            settings: startup.clone(),
            startup,
            statements: HashMap::new(),
        }
    }

    /// The value the client set for `name` (case-insensitive), if any.
    pub fn setting(&self, name: &str) -> Option<&str> {
        self.settings
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

/// What Sluice knows about one server connection's session.
#[derive(Debug, Default)]
pub struct ServerState {
    /// Settings Sluice (or a tracked client SET) applied beyond the server's defaults.
    pub settings: Settings,
    /// Something changed settings in a way Sluice could not follow: `RESET ALL` first.
    pub settings_unknown: bool,
    /// Shared statements prepared on this server.
    pub statements: ServerStatements,
}

impl ServerState {
    /// Forgets everything after the server was reset with DISCARD ALL.
    pub fn clear(&mut self) {
        self.settings.clear();
        self.settings_unknown = false;
        self.statements.clear();
    }

    /// SQL that turns this server's settings into `want`, or `None` if they already match.
    /// Values go through `set_config`, which parses them exactly like startup parameters.
    pub fn sync_sql(&self, want: &Settings) -> Option<String> {
        if !self.settings_unknown && &self.settings == want {
            return None;
        }
        let mut sql = String::new();
        let current = if self.settings_unknown {
            sql.push_str("RESET ALL;");
            None
        } else {
            Some(&self.settings)
        };
        if let Some(current) = current {
            for name in current.keys().filter(|n| !want.contains_key(n)) {
                sql.push_str("RESET ");
                sql.push_str(name);
                sql.push(';');
            }
        }
        let sets: Vec<String> = want
            .iter()
            .filter(|(n, v)| current.and_then(|c| c.get(n)) != Some(v))
            .map(|(n, v)| {
                format!(
                    "pg_catalog.set_config({}, {}, false)",
                    literal(n),
                    literal(v)
                )
            })
            .collect();
        if !sets.is_empty() {
            sql.push_str("SELECT ");
            sql.push_str(&sets.join(", "));
            sql.push(';');
        }
        Some(sql)
    }
}

/// A configuration parameter name Sluice is willing to put into SQL, lower-cased.
pub fn setting_name(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
    ok.then(|| name.to_ascii_lowercase())
}

/// An escape-string literal (`E'...'`), safe whatever `standard_conforming_strings` is.
fn literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 3);
    out.push_str("E'");
    for c in s.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// Splits a startup `options` string into `name=value` settings (`-c name=value`,
/// `--name=value`), honouring backslash-escaped spaces as libpq does.
fn parse_options(options: &str) -> Vec<(String, String)> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => cur.extend(chars.next()),
            c if c.is_whitespace() => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    let mut out = Vec::new();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let kv = if w == "-c" {
            it.next()
        } else if let Some(rest) = w.strip_prefix("--") {
            Some(rest.to_owned())
        } else {
            w.strip_prefix("-c").map(str::to_owned)
        };
        if let Some((k, v)) = kv.as_deref().and_then(|kv| kv.split_once('=')) {
            out.push((k.replace('-', "_"), v.to_owned()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(k: &str, v: &str) -> (String, String) {
        (k.to_owned(), v.to_owned())
    }

    #[test]
    fn startup_settings() {
        let c = ClientState::from_startup(&[
            p("user", "app"),
            p("database", "db"),
            p("application_name", "web"),
            p("DateStyle", "ISO"),
            p(
                "options",
                "-c search_path=a,b --statement-timeout=5s -csome.x=1 -c x=a\\ b",
            ),
            p("bad name", "x"),
        ]);
        assert_eq!(c.setting("application_name"), Some("web"));
        assert_eq!(c.setting("datestyle"), Some("ISO"));
        assert_eq!(c.setting("search_path"), Some("a,b"));
        assert_eq!(c.setting("statement_timeout"), Some("5s"));
        assert_eq!(c.setting("some.x"), Some("1"));
        assert_eq!(c.setting("x"), Some("a b"));
        assert_eq!(c.settings.len(), 6);
        let bare = ClientState::from_startup(&[p("user", "app")]);
        assert_eq!(bare.setting("application_name"), Some(""));
    }

    #[test]
    fn sync_sql_diffs() {
        let mut s = ServerState::default();
        let mut want = Settings::default();
        assert_eq!(s.sync_sql(&want), None);
        want.insert("application_name".to_owned(), "it's".to_owned());
        assert_eq!(
            s.sync_sql(&want).as_deref(),
            Some("SELECT pg_catalog.set_config(E'application_name', E'it\\'s', false);")
        );
        s.settings = want.clone();
        assert_eq!(s.sync_sql(&want), None);
        s.settings.insert("work_mem".into(), "8MB".into());
        assert_eq!(s.sync_sql(&want).as_deref(), Some("RESET work_mem;"));
        s.settings_unknown = true;
        assert!(s
            .sync_sql(&want)
            .is_some_and(|q| q.starts_with("RESET ALL;SELECT")));
    }
}
