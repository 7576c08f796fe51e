//! The two formats a pgbouncer.ini holds: the ini file itself (sections, `key = value`,
//! `;`/`#` comments) and libpq-style connect strings in `[databases]`.

use std::collections::BTreeMap;

/// What went wrong reading a pgbouncer.ini.
#[derive(Debug, thiserror::Error)]
#[error("pgbouncer.ini line {line}: {message}")]
pub struct ImportError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong there.
    pub message: String,
}

/// `key=value key='quoted value'` pairs of a libpq-style connect string.
pub(super) fn connect_string(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let eq = rest
            .find('=')
            .ok_or_else(|| format!("expected key=value at {rest:?}"))?;
        let key = rest[..eq].trim().to_owned();
        rest = rest[eq + 1..].trim_start();
        let mut value = String::new();
        if let Some(q) = rest.strip_prefix('\'') {
            let mut chars = q.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            value.push(n);
                        }
                    }
                    '\'' => {
                        end = Some(i);
                        break;
                    }
                    c => value.push(c),
                }
            }
            let end = end.ok_or("unterminated quote")?;
            rest = q[end + 1..].trim_start();
        } else {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            value.push_str(&rest[..end]);
            rest = rest[end..].trim_start();
        }
        out.push((key, value));
    }
    Ok(out)
}

/// Sections of an ini file: name → (line, key, value) in order.
pub(super) type Sections = BTreeMap<String, Vec<(usize, String, String)>>;

pub(super) fn parse_ini(text: &str) -> Result<Sections, ImportError> {
    let mut sections = Sections::new();
    let mut current: Option<String> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let n = i + 1;
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        let err = |m: &str| ImportError {
            line: n,
            message: m.to_owned(),
        };
        if line.starts_with("%include") {
            return Err(err(
                "%include is not supported: import the included file's lines together",
            ));
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim().to_ascii_lowercase();
            sections.entry(name.clone()).or_default();
            current = Some(name);
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| err("expected key = value"))?;
        let section = current
            .as_ref()
            .ok_or_else(|| err("a key before any [section]"))?;
        let key = key.trim().trim_matches('"').to_owned();
        // Database and user names keep their case; PgBouncer's own keys do not.
        let key = if section == "databases" || section == "users" {
            key
        } else {
            key.to_ascii_lowercase()
        };
        sections
            .entry(section.clone())
            .or_default()
            .push((n, key, value.trim().to_owned()));
    }
    Ok(sections)
}
