//! Recognises the few simple-query statements whose effect on session state Sluice must
//! track in transaction mode. This is not a SQL parser: it looks at a single statement
//! (optionally ending in `;`) and answers [`Statement::Other`] for anything else, in which
//! case the server-side effects are caught by CommandComplete tags instead.

/// What a simple query does to session state, as far as Sluice cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Statement {
    /// `SET [SESSION] name {TO|=} value` / `SET TIME ZONE value` / `SET NAMES value`
    /// (as `client_encoding`), not `SET LOCAL`.
    Set(String),
    /// `SET LOCAL ...` or `SET TRANSACTION ...`: lasts until the transaction ends, nothing
    /// to track.
    SetLocal,
    /// `RESET name` or `SET name TO DEFAULT`.
    Reset(String),
    /// `RESET ALL`.
    ResetAll,
    /// `DEALLOCATE [PREPARE] name` (the name as the client's bytes).
    Deallocate(Vec<u8>),
    /// `DEALLOCATE [PREPARE] ALL`.
    DeallocateAll,
    /// `DISCARD ALL`.
    DiscardAll,
    /// `LISTEN channel` (the channel as PostgreSQL names it: unquoted names fold to
    /// lower case).
    Listen(Vec<u8>),
    /// `UNLISTEN channel`; `None` for `UNLISTEN *`.
    Unlisten(Option<Vec<u8>>),
    /// A LISTEN or UNLISTEN Sluice cannot read (several statements, comments, ...).
    ListenOther,
    /// `SAVEPOINT name`.
    Savepoint(Vec<u8>),
    /// `ROLLBACK [WORK|TRANSACTION] TO [SAVEPOINT] name`.
    RollbackTo(Vec<u8>),
    /// `RELEASE [SAVEPOINT] name`.
    Release(Vec<u8>),
    /// Anything else (including several statements).
    Other,
}

/// Classifies one simple query's text (bytes in the client's encoding: keywords are ASCII
/// in every encoding PostgreSQL allows for clients, and nothing here needs UTF-8).
pub(crate) fn classify(sql: &[u8]) -> Statement {
    // Runs on every simple query: decide from the first keyword, without allocating, that
    // the common statements (SELECT, INSERT, BEGIN, ...) are none of ours.
    let trimmed = sql.trim_ascii_start();
    let first_len = trimmed
        .iter()
        .position(|b| !b.is_ascii_alphabetic())
        .unwrap_or(trimmed.len());
    let first = &trimmed[..first_len];
    const OURS: [&[u8]; 9] = [
        b"SET",
        b"RESET",
        b"DEALLOCATE",
        b"DISCARD",
        b"LISTEN",
        b"UNLISTEN",
        b"SAVEPOINT",
        b"RELEASE",
        b"ROLLBACK",
    ];
    if !OURS.iter().any(|k| k.eq_ignore_ascii_case(first)) {
        return Statement::Other;
    }
    let sql = sql.trim_ascii();
    let sql = sql.strip_suffix(b";").unwrap_or(sql).trim_ascii_end();
    let listen = first.eq_ignore_ascii_case(b"LISTEN");
    if listen || first.eq_ignore_ascii_case(b"UNLISTEN") {
        return classify_listen(listen, sql[first_len..].trim_ascii());
    }
    if sql.contains(&b';') || sql.starts_with(b"--") || sql.starts_with(b"/*") {
        return Statement::Other;
    }
    let words: Vec<&[u8]> = sql
        .split(|b| b.is_ascii_whitespace())
        .filter(|w| !w.is_empty())
        .collect();
    classify_words(&words)
}

/// Classifies a single statement of one of Sluice's keywords, split into words.
fn classify_words(words: &[&[u8]]) -> Statement {
    let is = |i: usize, k: &str| {
        words
            .get(i)
            .is_some_and(|w| w.eq_ignore_ascii_case(k.as_bytes()))
    };
    if is(0, "SET") {
        return classify_set(words);
    }
    if is(0, "RESET") && words.len() == 2 {
        return if is(1, "ALL") {
            Statement::ResetAll
        } else {
            ident(words[1]).map_or(Statement::Other, Statement::Reset)
        };
    }
    if is(0, "DEALLOCATE") {
        let i = if is(1, "PREPARE") { 2 } else { 1 };
        return match (words.len() == i + 1, is(i, "ALL")) {
            (true, true) => Statement::DeallocateAll,
            (true, false) => Statement::Deallocate(unquote(words[i])),
            _ => Statement::Other,
        };
    }
    if is(0, "DISCARD") && words.len() == 2 && is(1, "ALL") {
        return Statement::DiscardAll;
    }
    if is(0, "SAVEPOINT") && words.len() == 2 {
        return Statement::Savepoint(unquote(words[1]));
    }
    if is(0, "RELEASE") {
        let i = if is(1, "SAVEPOINT") { 2 } else { 1 };
        return match words.get(i) {
            Some(w) if words.len() == i + 1 => Statement::Release(unquote(w)),
            _ => Statement::Other,
        };
    }
    if is(0, "ROLLBACK") {
        return classify_rollback(words);
    }
    Statement::Other
}

/// `LISTEN channel` / `UNLISTEN channel | *`, given what follows the keyword: one
/// identifier, quoted (`"Chan"`, `""` for a quote) or not (folded to lower case, as
/// PostgreSQL folds it). Anything else is [`Statement::ListenOther`].
fn classify_listen(listen: bool, rest: &[u8]) -> Statement {
    let channel = if let Some(quoted) = rest.strip_prefix(b"\"").and_then(|r| r.strip_suffix(b"\""))
    {
        (!quoted.is_empty() && quotes_doubled(quoted)).then(|| unquote(rest))
    } else {
        let word = |b: &u8| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'$' || *b >= 0x80;
        let ok = rest
            .first()
            .is_some_and(|b| !b.is_ascii_digit() && *b != b'$')
            && rest.iter().all(word);
        ok.then(|| rest.to_ascii_lowercase())
    };
    match (listen, channel) {
        (true, Some(c)) => Statement::Listen(c),
        (false, Some(c)) => Statement::Unlisten(Some(c)),
        (false, None) if rest == b"*" => Statement::Unlisten(None),
        _ => Statement::ListenOther,
    }
}

/// Inside a quoted identifier, every quote is doubled.
fn quotes_doubled(quoted: &[u8]) -> bool {
    let mut i = 0;
    while i < quoted.len() {
        if quoted[i] == b'"' {
            if quoted.get(i + 1) != Some(&b'"') {
                return false;
            }
            i += 1;
        }
        i += 1;
    }
    true
}

/// `ROLLBACK [WORK | TRANSACTION] TO [SAVEPOINT] name`; other ROLLBACKs are not ours.
fn classify_rollback(words: &[&[u8]]) -> Statement {
    let is = |i: usize, k: &str| {
        words
            .get(i)
            .is_some_and(|w| w.eq_ignore_ascii_case(k.as_bytes()))
    };
    let mut i = 1;
    if is(i, "WORK") || is(i, "TRANSACTION") {
        i += 1;
    }
    if !is(i, "TO") {
        return Statement::Other;
    }
    i += 1;
    if is(i, "SAVEPOINT") {
        i += 1;
    }
    match words.get(i) {
        Some(w) if words.len() == i + 1 => Statement::RollbackTo(unquote(w)),
        _ => Statement::Other,
    }
}

/// A name as PostgreSQL folds it: unquoted ASCII lower-cased, quoted kept (bytes in the
/// client's encoding either way).
fn unquote(word: &[u8]) -> Vec<u8> {
    match word.strip_prefix(b"\"").and_then(|w| w.strip_suffix(b"\"")) {
        Some(q) => {
            let mut out = Vec::with_capacity(q.len());
            let mut i = 0;
            while i < q.len() {
                out.push(q[i]);
                i += if q[i] == b'"' && q.get(i + 1) == Some(&b'"') {
                    2
                } else {
                    1
                };
            }
            out
        }
        None => word.to_ascii_lowercase(),
    }
}

/// What a query may do to session state behind the protocol's back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Hidden {
    /// It may change settings (`set_config`): read them back before the server is released.
    pub settings: bool,
    /// It may take session state that cannot follow a client (session-level advisory
    /// locks): the server needs a reset.
    pub state: bool,
}

/// Scans SQL text for functions that change session state invisibly to the protocol.
pub(crate) fn hidden_effects(sql: &[u8]) -> Hidden {
    // Runs on every query, so anchor on '_' (each needle has one at a known offset; most
    // queries have few), found with a SIMD search, instead of comparing every window
    // against every needle.
    const NEEDLES: [(&[u8], usize, bool); 3] = [
        (b"set_config", 3, true),
        (b"pg_advisory_lock", 2, false),
        (b"pg_try_advisory_lock", 2, false),
    ];
    let mut found = Hidden::default();
    for i in memchr::memchr_iter(b'_', sql) {
        for (needle, underscore, settings) in NEEDLES {
            // The first byte rules out nearly every window before the full comparison.
            let hit = i
                .checked_sub(underscore)
                .filter(|&start| sql[start].eq_ignore_ascii_case(&needle[0]))
                .and_then(|start| sql.get(start..start + needle.len()))
                .is_some_and(|w| w.eq_ignore_ascii_case(needle));
            if hit {
                if settings {
                    found.settings = true;
                } else {
                    found.state = true;
                }
            }
        }
    }
    found
}

fn classify_set(words: &[&[u8]]) -> Statement {
    let is = |i: usize, k: &str| {
        words
            .get(i)
            .is_some_and(|w| w.eq_ignore_ascii_case(k.as_bytes()))
    };
    let mut i = 1;
    if is(i, "LOCAL") {
        return Statement::SetLocal;
    }
    if is(i, "SESSION") {
        i += 1;
        // SET SESSION AUTHORIZATION / CHARACTERISTICS: not one named setting (the
        // server's CommandComplete "SET" then says settings changed; they are read back).
        if is(i, "AUTHORIZATION") || is(i, "CHARACTERISTICS") {
            return Statement::Other;
        }
    }
    let Some(first) = words.get(i) else {
        return Statement::Other;
    };
    if is(i, "TIME") && is(i + 1, "ZONE") {
        return Statement::Set("timezone".into());
    }
    if is(i, "TRANSACTION") {
        // SET TRANSACTION ...: lasts until the transaction ends.
        return Statement::SetLocal;
    }
    if is(i, "NAMES") {
        return Statement::Set("client_encoding".into());
    }
    // `name=value`, `name = value` and `name TO value` all start with the name.
    let name_part = first.split(|&b| b == b'=').next().unwrap_or_default();
    let Some(name) = ident(name_part) else {
        return Statement::Other;
    };
    let has_eq = first.contains(&b'=');
    let after_eq = first.splitn(2, |&b| b == b'=').nth(1);
    let rest = &words[i + 1..];
    let value_is_default = match (has_eq, rest) {
        (true, [v]) if first.ends_with(b"=") => v.eq_ignore_ascii_case(b"DEFAULT"),
        (true, []) => after_eq.is_some_and(|v| v.eq_ignore_ascii_case(b"DEFAULT")),
        (false, [op, v]) if op.eq_ignore_ascii_case(b"TO") || *op == b"=" => {
            v.eq_ignore_ascii_case(b"DEFAULT")
        }
        (false, [op, v]) if op.starts_with(b"=") && op.len() > 1 => v.is_empty(),
        (false, []) => return Statement::Other,
        _ => false,
    };
    if value_is_default {
        Statement::Reset(name)
    } else {
        Statement::Set(name)
    }
}

/// A plain (unquoted) configuration parameter name, lower-cased; `None` for anything else.
fn ident(word: &[u8]) -> Option<String> {
    let ok = !word.is_empty()
        && word
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.');
    ok.then(|| String::from_utf8_lossy(word).to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use Statement::*;

    fn h(sql: &str) -> Hidden {
        hidden_effects(sql.as_bytes())
    }

    #[test]
    fn hidden_effects_are_split_by_kind() {
        let settings = Hidden {
            settings: true,
            state: false,
        };
        let state = Hidden {
            settings: false,
            state: true,
        };
        assert_eq!(h("SELECT SET_CONFIG('a','b',false)"), settings);
        assert_eq!(h("select pg_advisory_lock(1)"), state);
        assert_eq!(h("select pg_try_advisory_lock_shared(1)"), state);
        assert_eq!(h("select pg_advisory_xact_lock(1)"), Hidden::default());
        assert_eq!(h("select 1"), Hidden::default());
        assert_eq!(h("select set_conf, x_y from a_b"), Hidden::default());
        assert_eq!(h("_set_config"), settings);
        assert_eq!(h("_"), Hidden::default());
        assert_eq!(
            hidden_effects(b"select '\xa4', set_config('a', '\xe9', false)"),
            settings
        );
    }

    #[test]
    fn classifies() {
        let cases: [(&[u8], Statement); 43] = [
            (b"SET search_path TO a, b", Set("search_path".into())),
            (b"set TimeZone = 'UTC';", Set("timezone".into())),
            (
                b"SET statement_timeout=5000",
                Set("statement_timeout".into()),
            ),
            (b"SET SESSION work_mem TO '8MB'", Set("work_mem".into())),
            (b"SET TIME ZONE 'Europe/Paris'", Set("timezone".into())),
            (
                b"SET application_name TO DEFAULT",
                Reset("application_name".into()),
            ),
            (b"SET LOCAL work_mem = '1MB'", SetLocal),
            (b"SET SESSION AUTHORIZATION bob", Other),
            (
                b"SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
                Other,
            ),
            (b"SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", SetLocal),
            (b"SET NAMES 'LATIN1'", Set("client_encoding".into())),
            (
                b"SET application_name = 'caf\xe9'",
                Set("application_name".into()),
            ),
            (b"RESET work_mem", Reset("work_mem".into())),
            (b"reset all", ResetAll),
            (b"DEALLOCATE s1", Deallocate(b"s1".to_vec())),
            (b"DEALLOCATE \"S\xe91\"", Deallocate(b"S\xe91".to_vec())),
            (b"DEALLOCATE PREPARE ALL", DeallocateAll),
            (b"deallocate all;", DeallocateAll),
            (b"DISCARD ALL", DiscardAll),
            (b"LISTEN chan", Listen(b"chan".to_vec())),
            (b"listen \"Mixed Case\";", Listen(b"Mixed Case".to_vec())),
            (b"LISTEN \"a\"\"b\"", Listen(b"a\"b".to_vec())),
            (b"LISTEN \"a\"b\"", ListenOther),
            (b"LISTEN a; LISTEN b", ListenOther),
            (b"LISTEN", ListenOther),
            (b"UNLISTEN a b", ListenOther),
            (b"LISTEN \"Mixed\"", Listen(b"Mixed".to_vec())),
            (b"LISTEN Chan;", Listen(b"chan".to_vec())),
            (b"UNLISTEN chan", Unlisten(Some(b"chan".to_vec()))),
            (b"unlisten *", Unlisten(None)),
            (b"SET a = 1; SELECT 1", Other),
            (b"SELECT 1", Other),
            (b"select '\xa4'", Other),
            (b"", Other),
            (b"SET", Other),
            (b"SAVEPOINT s1", Savepoint(b"s1".to_vec())),
            (b"savepoint \"Ab\"", Savepoint(b"Ab".to_vec())),
            (b"ROLLBACK TO SAVEPOINT s1", RollbackTo(b"s1".to_vec())),
            (b"rollback work to S1", RollbackTo(b"s1".to_vec())),
            (b"ROLLBACK", Other),
            (b"RELEASE SAVEPOINT s1", Release(b"s1".to_vec())),
            (b"release s1;", Release(b"s1".to_vec())),
            (b"savepoint \"a\"\"b\"", Savepoint(b"a\"b".to_vec())),
        ];
        for (sql, want) in cases {
            assert_eq!(classify(sql), want, "{}", String::from_utf8_lossy(sql));
        }
    }
}
