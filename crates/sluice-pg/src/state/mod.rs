//! Session state that must follow a client across server connections (its settings and
//! prepared statements), and the matching state each server connection carries;
//! [`prepared`] is the pool-wide registry of prepared statements both sides refer to.
//! Below the session, the pool and the server connection (all three hold it), so none of
//! them imports another through it.

mod lazy;
pub mod prepared;

pub use lazy::{Channels, ClientStatements};

use std::sync::Arc;

use prepared::ServerStatements;

/// A small map of setting name → value (the value as bytes in the client's encoding, which
/// need not be UTF-8), kept as a sorted vector (a session has a handful
/// of settings, and a `BTreeMap` node would cost ~0.5 KiB per idle client) and shared
/// copy-on-write: a client's startup settings, its current settings, the settings of the
/// server it lands on, and every other client that sent the same startup packet all point
/// at one allocation until one of them changes.
#[derive(Debug, Default, Clone, Eq)]
pub struct Settings(Arc<Vec<(String, Vec<u8>)>>);

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
    pub fn get(&self, name: &str) -> Option<&Vec<u8>> {
        self.find(name).ok().map(|i| &self.0[i].1)
    }

    /// True if `name` is set.
    pub fn contains_key(&self, name: &str) -> bool {
        self.find(name).is_ok()
    }

    /// Sets `name` to `value`.
    pub fn insert(&mut self, name: String, value: Vec<u8>) {
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
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Vec<u8>)> {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

/// Startup parameters that are not settings.
const NOT_SETTINGS: &[&str] = &[
    "user",
    "database",
    "options",
    "replication",
    TARGET_SESSION_ATTRS,
];

/// The startup parameter (or `-c` option) that picks the hosts of a multi-host database
/// a client's transactions go to (libpq's values); Sluice's own, never sent upstream.
pub const TARGET_SESSION_ATTRS: &str = "target_session_attrs";

/// The client's `target_session_attrs`, as a startup parameter or in `options`.
pub fn target_session_attrs(params: &[(String, String)]) -> Option<String> {
    params.iter().find_map(|(name, value)| {
        if name == TARGET_SESSION_ATTRS {
            return Some(value.clone());
        }
        (name == "options")
            .then(|| parse_options(value))?
            .into_iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(TARGET_SESSION_ATTRS))
            .map(|(_, v)| v)
    })
}

/// What one client believes its session looks like.
#[derive(Debug, Default)]
pub struct ClientState {
    /// Settings (lower-case name → value) the client's session has beyond server defaults.
    pub settings: Settings,
    /// The settings from the client's startup packet (what `RESET` returns to).
    pub startup: Settings,
    /// The client's named prepared statements (names as the client's bytes).
    pub statements: ClientStatements,
    /// Channels the client LISTENs on through the pool's notification hub (transaction
    /// mode; committed LISTENs only).
    pub listening: Channels,
}

impl ClientState {
    /// Builds the state from StartupMessage parameters: every parameter that is a setting
    /// (application_name, DateStyle, ...) plus `-c name=value` / `--name=value` in `options`.
    pub fn from_startup(params: &[(String, String)]) -> Self {
        let mut startup = Settings::default();
        for (name, value) in params {
            if name == "options" {
                for (n, v) in parse_options(value) {
                    if n.eq_ignore_ascii_case(TARGET_SESSION_ATTRS) {
                        continue;
                    }
                    if let Some(n) = setting_name(&n) {
                        startup.insert(n, v.into_bytes());
                    }
                }
            } else if !NOT_SETTINGS.contains(&name.as_str()) && !name.starts_with("_pq_.") {
                if let Some(n) = setting_name(name) {
                    startup.insert(n, value.clone().into_bytes());
                }
            }
        }
        // PostgreSQL's default is an empty application_name; without this a client would
        // see whatever the previous client on that server set.
        if !startup.contains_key("application_name") {
            startup.insert("application_name".to_owned(), Vec::new());
        }
        Self {
            settings: startup.clone(),
            startup,
            statements: ClientStatements::default(),
            listening: Default::default(),
        }
    }

    /// The value the client set for `name` (case-insensitive), if any.
    pub fn setting(&self, name: &str) -> Option<&[u8]> {
        self.settings
            .get(&name.to_ascii_lowercase())
            .map(Vec::as_slice)
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

    /// The queries that turn this server's settings into `want` (none if they already
    /// match). Values go through `set_config`, which parses them exactly like startup
    /// parameters.
    ///
    /// Values are bytes in the client's encoding and PostgreSQL converts a whole Query
    /// message from the connection's `client_encoding` before parsing it, so a change of
    /// `client_encoding` goes first, in a message of its own; values are dollar-quoted,
    /// which needs no escaping (no multibyte encoding has `$` as a trailing byte, unlike
    /// `\\` in SJIS).
    pub fn sync_sql(&self, want: &Settings) -> Vec<Vec<u8>> {
        const ENCODING: &str = "client_encoding";
        if !self.settings_unknown && &self.settings == want {
            return Vec::new();
        }
        let mut queries = Vec::new();
        let current = (!self.settings_unknown).then_some(&self.settings);
        let mut first = Vec::new();
        if self.settings_unknown {
            first.extend_from_slice(b"RESET ALL;");
        }
        let have_encoding = current.and_then(|c| c.get(ENCODING));
        if self.settings_unknown || have_encoding != want.get(ENCODING) {
            match want.get(ENCODING) {
                Some(v) => {
                    first.extend_from_slice(b"SELECT ");
                    set_config(&mut first, ENCODING, v);
                    first.push(b';');
                }
                None if have_encoding.is_some() => {
                    first.extend_from_slice(b"RESET client_encoding;")
                }
                None => {}
            }
        }
        if !first.is_empty() {
            queries.push(first);
        }
        let mut rest = Vec::new();
        if let Some(current) = current {
            for name in current
                .keys()
                .filter(|n| *n != ENCODING && !want.contains_key(n))
            {
                rest.extend_from_slice(b"RESET ");
                rest.extend_from_slice(name.as_bytes());
                rest.push(b';');
            }
        }
        let mut sets = want
            .iter()
            .filter(|(n, v)| *n != ENCODING && current.and_then(|c| c.get(n)) != Some(v))
            .peekable();
        if sets.peek().is_some() {
            rest.extend_from_slice(b"SELECT ");
            for (i, (n, v)) in sets.enumerate() {
                if i > 0 {
                    rest.extend_from_slice(b", ");
                }
                set_config(&mut rest, n, v);
            }
            rest.push(b';');
        }
        if !rest.is_empty() {
            queries.push(rest);
        }
        queries
    }
}

/// The query that reads a session's settings back: every setting the session changed
/// (`source = 'session'`: SET, `set_config(..., false)`, Sluice's own sync). Its rows are
/// (name, value as `SHOW` prints it, which `set_config` parses back to the same value).
pub const READ_BACK_SQL: &[u8] = b"SELECT name, pg_catalog.current_setting(name) \
FROM pg_catalog.pg_settings WHERE source = 'session' \
AND name NOT IN ('transaction_isolation', 'transaction_read_only', 'transaction_deferrable')";

/// Appends `pg_catalog.set_config('name', <value>, false)`; `name` is a checked
/// [`setting_name`].
fn set_config(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    set_config_call(out, name, value, false);
}

/// Appends `pg_catalog.set_config('name', <value>, <is_local>)`; `name` is a checked
/// [`setting_name`], `value` any bytes (dollar-quoted).
pub(crate) fn set_config_call(out: &mut Vec<u8>, name: &str, value: &[u8], local: bool) {
    out.extend_from_slice(b"pg_catalog.set_config('");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"', ");
    dollar_quote(out, value);
    out.extend_from_slice(if local { b", true)" } else { b", false)" });
}

/// Appends `value` as a dollar-quoted literal: the first occurrence of the tag after the
/// opening one is the closing one.
fn dollar_quote(out: &mut Vec<u8>, value: &[u8]) {
    let mut n = 0u32;
    let tag = loop {
        let tag = if n == 0 {
            b"$s$".to_vec()
        } else {
            format!("$s{n}$").into_bytes()
        };
        let mut closed = value.to_vec();
        closed.extend_from_slice(&tag);
        let first = closed.windows(tag.len()).position(|w| w == tag.as_slice());
        if first == Some(value.len()) {
            break tag;
        }
        n += 1;
    };
    out.extend_from_slice(&tag);
    out.extend_from_slice(value);
    out.extend_from_slice(&tag);
}

/// A configuration parameter name Sluice is willing to put into SQL, lower-cased.
pub fn setting_name(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
    ok.then(|| name.to_ascii_lowercase())
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
        assert_eq!(c.setting("application_name"), Some(&b"web"[..]));
        assert_eq!(c.setting("datestyle"), Some(&b"ISO"[..]));
        assert_eq!(c.setting("search_path"), Some(&b"a,b"[..]));
        assert_eq!(c.setting("statement_timeout"), Some(&b"5s"[..]));
        assert_eq!(c.setting("some.x"), Some(&b"1"[..]));
        assert_eq!(c.setting("x"), Some(&b"a b"[..]));
        assert_eq!(c.settings.len(), 6);
        let bare = ClientState::from_startup(&[p("user", "app")]);
        assert_eq!(bare.setting("application_name"), Some(&b""[..]));
    }

    fn texts(q: Vec<Vec<u8>>) -> Vec<String> {
        q.into_iter()
            .map(|q| String::from_utf8_lossy(&q).into_owned())
            .collect()
    }

    #[test]
    fn sync_sql_diffs() {
        let mut s = ServerState::default();
        let mut want = Settings::default();
        assert!(s.sync_sql(&want).is_empty());
        want.insert("application_name".to_owned(), b"it's".to_vec());
        assert_eq!(
            texts(s.sync_sql(&want)),
            ["SELECT pg_catalog.set_config('application_name', $s$it's$s$, false);"]
        );
        s.settings = want.clone();
        assert!(s.sync_sql(&want).is_empty());
        s.settings.insert("work_mem".into(), b"8MB".to_vec());
        assert_eq!(texts(s.sync_sql(&want)), ["RESET work_mem;"]);
        s.settings_unknown = true;
        let q = texts(s.sync_sql(&want));
        assert_eq!(q[0], "RESET ALL;");
        assert!(q[1].starts_with("SELECT"));
    }

    #[test]
    fn a_client_encoding_change_goes_first_in_its_own_query() {
        let s = ServerState::default();
        let mut want = Settings::default();
        want.insert("client_encoding".into(), b"LATIN9".to_vec());
        want.insert("application_name".into(), b"caf\xe9 \xa4".to_vec());
        let q = s.sync_sql(&want);
        assert_eq!(q.len(), 2);
        assert_eq!(
            q[0],
            b"SELECT pg_catalog.set_config('client_encoding', $s$LATIN9$s$, false);"
        );
        assert_eq!(
            q[1],
            b"SELECT pg_catalog.set_config('application_name', $s$caf\xe9 \xa4$s$, false);"
        );
        let mut on = ServerState {
            settings: want.clone(),
            ..ServerState::default()
        };
        on.settings
            .insert("client_encoding".into(), b"UTF8".to_vec());
        assert_eq!(texts(on.sync_sql(&want)).len(), 1);
        want.remove("client_encoding");
        assert_eq!(texts(on.sync_sql(&want))[0], "RESET client_encoding;");
    }

    #[test]
    fn dollar_quote_tag_never_occurs_in_the_value() {
        for v in [&b"plain"[..], b"$s$", b"a$s$b$s1$", b"ends $s", b"\x95\x5c"] {
            let mut out = Vec::new();
            dollar_quote(&mut out, v);
            let tag_len = out.iter().skip(1).position(|&b| b == b'$').unwrap() + 2;
            let (tag, rest) = out.split_at(tag_len);
            let body = &rest[..rest.len() - tag_len];
            assert_eq!(body, v);
            let mut closed = body.to_vec();
            closed.extend_from_slice(tag);
            let first = closed.windows(tag_len).position(|w| w == tag);
            assert_eq!(first, Some(body.len()), "{v:?}");
        }
    }
}
