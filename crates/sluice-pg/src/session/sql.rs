//! Recognises the few simple-query statements whose effect on session state Sluice must
//! track in transaction mode. This is not a SQL parser: it looks at a single statement
//! (optionally ending in `;`) and answers [`Statement::Other`] for anything else, in which
//! case the server-side effects are caught by CommandComplete tags instead.

/// What a simple query does to session state, as far as Sluice cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Statement {
    /// `SET [SESSION] name {TO|=} value` / `SET TIME ZONE value` (not `SET LOCAL`).
    Set(String),
    /// `SET LOCAL ...`: lasts until the transaction ends, nothing to track.
    SetLocal,
    /// `RESET name` or `SET name TO DEFAULT`.
    Reset(String),
    /// `RESET ALL`.
    ResetAll,
    /// `DEALLOCATE [PREPARE] name`.
    Deallocate(String),
    /// `DEALLOCATE [PREPARE] ALL`.
    DeallocateAll,
    /// `DISCARD ALL`.
    DiscardAll,
    /// `LISTEN channel`, which cannot work in transaction mode.
    Listen,
    /// `SAVEPOINT name`.
    Savepoint(String),
    /// `ROLLBACK [WORK|TRANSACTION] TO [SAVEPOINT] name`.
    RollbackTo(String),
    /// `RELEASE [SAVEPOINT] name`.
    Release(String),
    /// Anything else (including several statements).
    Other,
}

/// Classifies one simple query's text.
pub(crate) fn classify(sql: &str) -> Statement {
    // Runs on every simple query: decide from the first keyword, without allocating, that
    // the common statements (SELECT, INSERT, BEGIN, ...) are none of ours.
    let first = sql
        .trim_start()
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()
        .unwrap_or_default();
    const OURS: [&str; 8] = [
        "SET",
        "RESET",
        "DEALLOCATE",
        "DISCARD",
        "LISTEN",
        "SAVEPOINT",
        "RELEASE",
        "ROLLBACK",
    ];
    if !OURS.iter().any(|k| k.eq_ignore_ascii_case(first)) {
        return Statement::Other;
    }
    let sql = sql.trim();
    let sql = sql.strip_suffix(';').unwrap_or(sql).trim_end();
    if sql.contains(';') || sql.starts_with("--") || sql.starts_with("/*") {
        return Statement::Other;
    }
    let words: Vec<&str> = sql.split_whitespace().collect();
    let upper = |i: usize| {
        words
            .get(i)
            .map(|w| w.to_ascii_uppercase())
            .unwrap_or_default()
    };
    match upper(0).as_str() {
        "SET" => classify_set(&words),
        "RESET" if words.len() == 2 => match upper(1).as_str() {
            "ALL" => Statement::ResetAll,
            _ => ident(words[1]).map_or(Statement::Other, Statement::Reset),
        },
        "DEALLOCATE" => {
            let i = if upper(1) == "PREPARE" { 2 } else { 1 };
            match (words.len() == i + 1, upper(i).as_str()) {
                (true, "ALL") => Statement::DeallocateAll,
                (true, _) => ident(words[i]).map_or(Statement::Other, Statement::Deallocate),
                _ => Statement::Other,
            }
        }
        "DISCARD" if words.len() == 2 && upper(1) == "ALL" => Statement::DiscardAll,
        "LISTEN" => Statement::Listen,
        "SAVEPOINT" if words.len() == 2 => {
            savepoint_name(words[1]).map_or(Statement::Other, Statement::Savepoint)
        }
        "RELEASE" => {
            let i = if upper(1) == "SAVEPOINT" { 2 } else { 1 };
            match words.get(i) {
                Some(w) if words.len() == i + 1 => {
                    savepoint_name(w).map_or(Statement::Other, Statement::Release)
                }
                _ => Statement::Other,
            }
        }
        "ROLLBACK" => {
            let mut i = 1;
            if matches!(upper(i).as_str(), "WORK" | "TRANSACTION") {
                i += 1;
            }
            if upper(i) != "TO" {
                return Statement::Other;
            }
            i += 1;
            if upper(i) == "SAVEPOINT" {
                i += 1;
            }
            match words.get(i) {
                Some(w) if words.len() == i + 1 => {
                    savepoint_name(w).map_or(Statement::Other, Statement::RollbackTo)
                }
                _ => Statement::Other,
            }
        }
        _ => Statement::Other,
    }
}

/// A savepoint name as PostgreSQL folds it: unquoted lower-cased, quoted kept.
fn savepoint_name(word: &str) -> Option<String> {
    if let Some(q) = word.strip_prefix('"').and_then(|w| w.strip_suffix('"')) {
        return (!q.is_empty()).then(|| q.replace("\"\"", "\""));
    }
    ident(word)
}

/// True if the SQL text calls a function that changes session state invisibly to the
/// protocol (`set_config`, session-level advisory locks): the server then needs a reset.
pub(crate) fn has_hidden_session_effects(sql: &str) -> bool {
    // Runs on every query, so anchor on '_' (each needle has one at a known offset; most
    // queries have few) instead of comparing every window against every needle.
    const NEEDLES: [(&[u8], usize); 3] = [
        (b"set_config", 3),
        (b"pg_advisory_lock", 2),
        (b"pg_try_advisory_lock", 2),
    ];
    let hay = sql.as_bytes();
    hay.iter()
        .enumerate()
        .filter(|(_, &b)| b == b'_')
        .any(|(i, _)| {
            NEEDLES.iter().any(|(needle, underscore)| {
                i.checked_sub(*underscore)
                    .and_then(|start| hay.get(start..start + needle.len()))
                    .is_some_and(|w| w.eq_ignore_ascii_case(needle))
            })
        })
}

fn classify_set(words: &[&str]) -> Statement {
    let mut i = 1;
    match words.get(i).map(|w| w.to_ascii_uppercase()).as_deref() {
        Some("LOCAL") => return Statement::SetLocal,
        None => return Statement::Other,
        Some("SESSION") => {
            i += 1;
            if words.get(i).is_some_and(|w| {
                w.eq_ignore_ascii_case("AUTHORIZATION") || w.eq_ignore_ascii_case("CHARACTERISTICS")
            }) {
                return Statement::Other;
            }
        }
        _ => {}
    }
    let Some(first) = words.get(i) else {
        return Statement::Other;
    };
    if first.eq_ignore_ascii_case("TIME")
        && words
            .get(i + 1)
            .is_some_and(|w| w.eq_ignore_ascii_case("ZONE"))
    {
        return Statement::Set("timezone".into());
    }
    if first.eq_ignore_ascii_case("TRANSACTION") {
        return Statement::Other;
    }
    // `name=value`, `name = value` and `name TO value` all start with the name.
    let name_part = first.split('=').next().unwrap_or_default();
    let Some(name) = ident(name_part) else {
        return Statement::Other;
    };
    let rest: Vec<&str> = words[i + 1..].to_vec();
    let value_is_default = match (first.contains('='), rest.as_slice()) {
        (true, [v]) if first.ends_with('=') => v.eq_ignore_ascii_case("DEFAULT"),
        (true, []) => first
            .split('=')
            .nth(1)
            .is_some_and(|v| v.eq_ignore_ascii_case("DEFAULT")),
        (false, [op, v]) if op.eq_ignore_ascii_case("TO") || *op == "=" => {
            v.eq_ignore_ascii_case("DEFAULT")
        }
        (false, [op, v]) if op.starts_with('=') && op.len() > 1 => v.is_empty(),
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
fn ident(word: &str) -> Option<String> {
    let ok = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
    ok.then(|| word.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use Statement::*;

    #[test]
    fn hidden_effects() {
        assert!(has_hidden_session_effects(
            "SELECT SET_CONFIG('a','b',false)"
        ));
        assert!(has_hidden_session_effects("select pg_advisory_lock(1)"));
        assert!(has_hidden_session_effects(
            "select pg_try_advisory_lock_shared(1)"
        ));
        assert!(!has_hidden_session_effects(
            "select pg_advisory_xact_lock(1)"
        ));
        assert!(!has_hidden_session_effects("select 1"));
        assert!(!has_hidden_session_effects("select set_conf, x_y from a_b"));
        assert!(has_hidden_session_effects("_set_config"));
        assert!(!has_hidden_session_effects("_"));
    }

    #[test]
    fn classifies() {
        let cases = [
            ("SET search_path TO a, b", Set("search_path".into())),
            ("set TimeZone = 'UTC';", Set("timezone".into())),
            (
                "SET statement_timeout=5000",
                Set("statement_timeout".into()),
            ),
            ("SET SESSION work_mem TO '8MB'", Set("work_mem".into())),
            ("SET TIME ZONE 'Europe/Paris'", Set("timezone".into())),
            (
                "SET application_name TO DEFAULT",
                Reset("application_name".into()),
            ),
            ("SET LOCAL work_mem = '1MB'", SetLocal),
            ("SET SESSION AUTHORIZATION bob", Other),
            ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", Other),
            ("RESET work_mem", Reset("work_mem".into())),
            ("reset all", ResetAll),
            ("DEALLOCATE s1", Deallocate("s1".into())),
            ("DEALLOCATE PREPARE ALL", DeallocateAll),
            ("deallocate all;", DeallocateAll),
            ("DISCARD ALL", DiscardAll),
            ("LISTEN chan", Listen),
            ("SET a = 1; SELECT 1", Other),
            ("SELECT 1", Other),
            ("", Other),
            ("SET", Other),
            ("SAVEPOINT s1", Savepoint("s1".into())),
            ("savepoint \"Ab\"", Savepoint("Ab".into())),
            ("ROLLBACK TO SAVEPOINT s1", RollbackTo("s1".into())),
            ("rollback work to S1", RollbackTo("s1".into())),
            ("ROLLBACK", Other),
            ("RELEASE SAVEPOINT s1", Release("s1".into())),
            ("release s1;", Release("s1".into())),
        ];
        for (sql, want) in cases {
            assert_eq!(classify(sql), want, "{sql}");
        }
    }
}
