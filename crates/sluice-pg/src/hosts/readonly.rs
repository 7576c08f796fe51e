//! Whether a request may run on a replica (`read_write_split`): a transaction that is one
//! read-only statement, or that begins `READ ONLY`. Not a SQL parser: a lexer that skips
//! quotes and comments, splits statements on `;`, and answers "no" whenever in doubt, so
//! the worst a wrong answer costs is a read served by the primary.

use crate::protocol::frame::{read_cstr, Frames};
use crate::protocol::messages::{query_text, Bind, Parse};

/// Words that make a statement that starts as a read a write, or that need the primary
/// (row locks, `SELECT INTO`, data-changing CTEs, sequences, advisory locks, ...).
const WRITES: [&str; 18] = [
    "INSERT",
    "UPDATE",
    "DELETE",
    "MERGE",
    "INTO",
    "FOR",
    "NEXTVAL",
    "SETVAL",
    "CURRVAL",
    "LASTVAL",
    "SET_CONFIG",
    "PG_ADVISORY_LOCK",
    "PG_ADVISORY_XACT_LOCK",
    "PG_TRY_ADVISORY_LOCK",
    "PG_TRY_ADVISORY_XACT_LOCK",
    "TXID_CURRENT",
    "PG_CURRENT_XACT_ID",
    "LO_CREATE",
];

/// Whether the complete frames in `buf` are a request a replica may answer: a simple
/// Query that is one read-only statement (or starts a `READ ONLY` transaction), or an
/// extended-protocol batch ending in Sync whose statements (parsed in it, or prepared
/// before: `prepared` gives their Parse bodies by client name) are all read-only.
pub(crate) fn is_read_only_request(
    buf: &[u8],
    max: usize,
    prepared: &dyn Fn(&[u8]) -> Option<bytes::Bytes>,
) -> bool {
    let mut frames = Frames::new(buf, max);
    let Some(first) = frames.next() else {
        return false;
    };
    if first.tag == b'Q' {
        return frames.next().is_none()
            && query_text(first.body).is_ok_and(|sql| is_read_only_sql(sql, true));
    }
    let mut parsed: Vec<&[u8]> = Vec::new();
    let (mut synced, mut bound) = (false, false);
    for frame in std::iter::once(first).chain(frames) {
        if synced {
            return false;
        }
        match frame.tag {
            b'P' => match Parse::decode(frame.body) {
                Ok(p) if is_read_only_sql(p.query(), false) => parsed.push(p.name),
                _ => return false,
            },
            b'B' => match Bind::decode(frame.body) {
                Ok(b) if parsed.contains(&b.statement) => {}
                Ok(b) if !b.statement.is_empty() => {
                    // A registry entry holds the Parse body after the name.
                    let read = prepared(b.statement).and_then(|rest| {
                        read_cstr(&rest, "Parse")
                            .ok()
                            .map(|(query, _)| is_read_only_sql(query, false))
                    });
                    if read != Some(true) {
                        return false;
                    }
                    bound = true;
                }
                _ => return false,
            },
            b'D' | b'E' | b'H' => {}
            b'S' => synced = true,
            _ => return false,
        }
    }
    synced && (bound || !parsed.is_empty())
}

/// Whether `sql` is one read-only statement, or (`begin_ok`) a `BEGIN`/`START
/// TRANSACTION ... READ ONLY` followed by statements that do not end it.
pub(crate) fn is_read_only_sql(sql: &[u8], begin_ok: bool) -> bool {
    let Some(statements) = statements(sql) else {
        return false;
    };
    match statements.as_slice() {
        [one] => is_read(one) || (begin_ok && begins_read_only(one)),
        [first, rest @ ..] if begin_ok && begins_read_only(first) => rest.iter().all(|s| {
            !s.first()
                .is_some_and(|w| is_any(w, &["COMMIT", "END", "ROLLBACK", "ABORT"]))
        }),
        _ => false,
    }
}

/// Whether the statement's words are a read: `SELECT`/`VALUES`/`TABLE`/`WITH`/`SHOW`
/// without a word of [`WRITES`], or `EXPLAIN` without `ANALYZE`.
fn is_read(words: &[String]) -> bool {
    let Some(first) = words.first() else {
        return false;
    };
    if is_any(first, &["SHOW"]) {
        return true;
    }
    if is_any(first, &["EXPLAIN"]) {
        return !words.iter().any(|w| is_any(w, &["ANALYZE", "ANALYSE"])) && explains_a_read(words);
    }
    is_any(first, &["SELECT", "VALUES", "TABLE", "WITH"])
        && !words
            .iter()
            .any(|w| is_any(w, &WRITES) || w.starts_with("LO_"))
}

/// `EXPLAIN [(options)] SELECT ...`: what follows the options is a read.
fn explains_a_read(words: &[String]) -> bool {
    words
        .iter()
        .position(|w| is_any(w, &["SELECT", "VALUES", "TABLE", "WITH"]))
        .is_some_and(|i| is_read(&words[i..]))
}

/// `BEGIN [TRANSACTION|WORK] ... READ ONLY` or `START TRANSACTION ... READ ONLY`.
fn begins_read_only(words: &[String]) -> bool {
    let begins = words
        .first()
        .is_some_and(|w| is_any(w, &["BEGIN", "START"]));
    begins
        && words
            .windows(2)
            .any(|w| is_any(&w[0], &["READ"]) && is_any(&w[1], &["ONLY"]))
}

fn is_any(word: &str, of: &[&str]) -> bool {
    of.iter().any(|k| word.eq_ignore_ascii_case(k))
}

/// The statements of `sql` as upper-cased words outside quotes and comments (quoted
/// text and identifiers are dropped); `None` when a quote or comment is unterminated.
fn statements(sql: &[u8]) -> Option<Vec<Vec<String>>> {
    let mut out: Vec<Vec<String>> = vec![Vec::new()];
    let mut word = String::new();
    let mut i = 0;
    let end_word = |word: &mut String, out: &mut Vec<Vec<String>>| {
        if !word.is_empty() {
            if let Some(last) = out.last_mut() {
                last.push(std::mem::take(word).to_ascii_uppercase());
            }
        }
    };
    while i < sql.len() {
        let b = sql[i];
        let rest = &sql[i..];
        if b.is_ascii_alphanumeric() || b == b'_' {
            word.push(b as char);
            i += 1;
            continue;
        }
        end_word(&mut word, &mut out);
        i += match b {
            b'\'' | b'"' => closing(rest, b)?,
            b'-' if rest.starts_with(b"--") => {
                rest.iter().position(|&c| c == b'\n').unwrap_or(rest.len())
            }
            b'/' if rest.starts_with(b"/*") => block_comment(rest)?,
            b'$' => dollar_quote(rest).unwrap_or(1),
            b';' => {
                out.push(Vec::new());
                1
            }
            _ => 1,
        };
    }
    end_word(&mut word, &mut out);
    out.retain(|s| !s.is_empty());
    Some(out)
}

/// Length of a quoted string or identifier at the start of `s` (doubled quotes escape).
fn closing(s: &[u8], quote: u8) -> Option<usize> {
    let mut i = 1;
    while i < s.len() {
        if s[i] == quote {
            if s.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return Some(i + 1);
        }
        // E'...' strings may escape a quote with a backslash; skipping the next byte is
        // safe for standard strings too only when it is a quote, so handle just that.
        if s[i] == b'\\' && s.get(i + 1) == Some(&quote) && quote == b'\'' {
            i += 2;
            continue;
        }
        i += 1;
    }
    None
}

/// Length of a (nested) block comment at the start of `s`.
fn block_comment(s: &[u8]) -> Option<usize> {
    let (mut depth, mut i) = (0usize, 0);
    while i + 1 < s.len() {
        match &s[i..i + 2] {
            b"/*" => {
                depth += 1;
                i += 2;
            }
            b"*/" => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// Length of a `$tag$ ... $tag$` string at the start of `s`, if it is one.
fn dollar_quote(s: &[u8]) -> Option<usize> {
    let tag_end = s[1..]
        .iter()
        .position(|&c| !(c.is_ascii_alphanumeric() || c == b'_'))
        .map(|p| p + 1)?;
    if s.get(tag_end) != Some(&b'$') {
        return None;
    }
    let tag = &s[..=tag_end];
    let body = &s[tag.len()..];
    let close = body.windows(tag.len()).position(|w| w == tag)?;
    Some(tag.len() + close + tag.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ro(sql: &str) -> bool {
        is_read_only_sql(sql.as_bytes(), true)
    }

    #[test]
    fn reads_are_recognised() {
        for sql in [
            "SELECT 1",
            "  select * from t where x = 'INSERT; DELETE'  ;",
            "SELECT pg_is_in_recovery()",
            "WITH a AS (SELECT 1) SELECT * FROM a",
            "VALUES (1), (2)",
            "TABLE t",
            "SHOW work_mem",
            "EXPLAIN SELECT 1",
            "EXPLAIN (COSTS OFF) SELECT 1",
            "SELECT $$ insert $$, \"update\" FROM t -- delete\n",
            "/* insert /* nested */ */ SELECT 1",
            "BEGIN READ ONLY; SELECT 1",
            "START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY",
        ] {
            assert!(ro(sql), "{sql} should be read-only");
        }
    }

    #[test]
    fn writes_and_doubtful_statements_are_not() {
        for sql in [
            "",
            "INSERT INTO t VALUES (1)",
            "SELECT 1; SELECT 2",
            "SELECT * FROM t FOR UPDATE",
            "SELECT * INTO new_t FROM t",
            "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
            "SELECT nextval('s')",
            "SELECT pg_advisory_lock(1)",
            "SELECT set_config('a.b', '1', false)",
            "EXPLAIN ANALYZE SELECT 1",
            "BEGIN",
            "BEGIN READ ONLY; COMMIT; INSERT INTO t VALUES (1)",
            "SELECT 'unterminated",
            "SELECT lo_import('/etc/passwd')",
            "LISTEN x",
        ] {
            assert!(!ro(sql), "{sql} should not be read-only");
        }
        assert!(!is_read_only_sql(b"BEGIN READ ONLY", false));
    }

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn extended_batches_need_their_own_read_only_parse_and_a_sync() {
        let parse = |name: &str, sql: &str| frame(b'P', format!("{name}\0{sql}\0\0\0").as_bytes());
        let bind = |stmt: &str| frame(b'B', format!("\0{stmt}\0\0\0\0\0\0\0").as_bytes());
        let sync = frame(b'S', b"");
        let exec = frame(b'E', b"\0\0\0\0\0");
        let batch = |parts: &[&Vec<u8>]| {
            parts
                .iter()
                .flat_map(|p| p.iter().copied())
                .collect::<Vec<u8>>()
        };
        let read = parse("", "SELECT 1");
        let write = parse("", "UPDATE t SET x = 1");
        let known = |name: &[u8]| match name {
            b"r" => Some(bytes::Bytes::from_static(b"SELECT 2\0\0\0")),
            b"w" => Some(bytes::Bytes::from_static(b"DELETE FROM t\0\0\0")),
            _ => None,
        };
        let ro = |b: &[u8]| is_read_only_request(b, 1 << 20, &known);
        assert!(ro(&batch(&[&read, &bind(""), &exec, &sync])));
        assert!(!ro(&batch(&[&write, &bind(""), &exec, &sync])));
        // No Sync yet; statements prepared before, read-only, writing or unknown.
        assert!(!ro(&batch(&[&read, &bind(""), &exec])));
        assert!(ro(&batch(&[&bind("r"), &exec, &sync])));
        assert!(!ro(&batch(&[&bind("w"), &exec, &sync])));
        assert!(!ro(&batch(&[&bind("s1"), &exec, &sync])));
        let query = frame(b'Q', b"SELECT 1\0");
        assert!(ro(&query));
        assert!(!ro(&batch(&[&query, &query])));
    }
}
