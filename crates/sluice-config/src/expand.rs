//! Environment expansion in the configuration file: `${VAR}` and `${VAR:-default}` (the
//! default when VAR is unset or empty, as in a shell), `$${` for a literal `${`.
//!
//! Expansion happens on the text before it is parsed, so error messages keep their line
//! numbers. It knows where TOML strings are: inside a basic string (`"..."`) the value is
//! escaped (quotes, backslashes, control characters), so any secret can be used; inside a
//! literal string (`'...'`) a value with a quote or a line break is refused; outside
//! strings (`pool_size = ${POOL}`) the value is inserted as it is. Comments are left alone.

use crate::ConfigError;

/// Where the scanner is in the TOML text.
#[derive(Clone, Copy, PartialEq, Eq)]
enum At {
    Code,
    Comment,
    Basic,
    Literal,
    MultiBasic,
    MultiLiteral,
}

/// Expands `${...}` in `text`; see the module docs. `env` looks up variables.
pub(crate) fn expand(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    if !text.contains("${") {
        return Ok(text.to_owned());
    }
    let mut out = String::with_capacity(text.len());
    let mut at = At::Code;
    let mut rest = text;
    let mut line = 1;
    while let Some(c) = rest.chars().next() {
        if rest.starts_with("$${") {
            out.push_str("${");
            rest = &rest[3..];
            continue;
        }
        if rest.starts_with("${") && at != At::Comment {
            let end = rest
                .find('}')
                .ok_or_else(|| bad(line, "`${` without a closing `}`"))?;
            let value = lookup(&rest[2..end], env).map_err(|m| bad(line, &m))?;
            insert(&mut out, &value, at).map_err(|m| bad(line, &m))?;
            rest = &rest[end + 1..];
            continue;
        }
        let (next, taken) = step(at, rest);
        at = next;
        out.push_str(&rest[..taken]);
        line += rest[..taken].matches('\n').count();
        rest = &rest[taken..];
        debug_assert!(taken > 0 || c == '\0');
    }
    Ok(out)
}

/// The scanner's next state and how many bytes of `rest` it consumed.
fn step(at: At, rest: &str) -> (At, usize) {
    let one = rest.chars().next().map_or(1, char::len_utf8);
    match at {
        At::Code if rest.starts_with("\"\"\"") => (At::MultiBasic, 3),
        At::Code if rest.starts_with("'''") => (At::MultiLiteral, 3),
        At::Code if rest.starts_with('"') => (At::Basic, 1),
        At::Code if rest.starts_with('\'') => (At::Literal, 1),
        At::Code if rest.starts_with('#') => (At::Comment, 1),
        At::Comment if rest.starts_with('\n') => (At::Code, 1),
        At::Basic | At::MultiBasic if rest.starts_with('\\') => {
            (at, 1 + rest[1..].chars().next().map_or(0, char::len_utf8))
        }
        At::Basic if rest.starts_with('"') => (At::Code, 1),
        At::Literal if rest.starts_with('\'') => (At::Code, 1),
        At::MultiBasic if rest.starts_with("\"\"\"") => (At::Code, 3),
        At::MultiLiteral if rest.starts_with("'''") => (At::Code, 3),
        _ => (at, one),
    }
}

/// The value of `NAME` or `NAME:-default`.
fn lookup(spec: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let (name, default) = match spec.split_once(":-") {
        Some((name, default)) => (name, Some(default)),
        None => (spec, None),
    };
    let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(format!("`${{{spec}}}`: not a variable name"));
    }
    match (
        env(name).filter(|v| !v.is_empty() || default.is_none()),
        default,
    ) {
        (Some(v), _) => Ok(v),
        (None, Some(d)) => Ok(d.to_owned()),
        (None, None) => Err(format!(
            "environment variable {name} is not set (write ${{{name}:-default}} for a default)"
        )),
    }
}

/// Appends `value` where the scanner is.
fn insert(out: &mut String, value: &str, at: At) -> Result<(), String> {
    match at {
        At::Basic | At::MultiBasic => {
            for c in value.chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
                    c => out.push(c),
                }
            }
        }
        At::Literal | At::MultiLiteral => {
            if value.contains('\'') || value.contains('\n') {
                return Err(
                    "a value with a quote or line break cannot go in a '...' string; use \"...\""
                        .into(),
                );
            }
            out.push_str(value);
        }
        At::Code | At::Comment => out.push_str(value),
    }
    Ok(())
}

fn bad(line: usize, message: &str) -> ConfigError {
    ConfigError::invalid("config", format!("line {line}: {message}"))
}

/// Reads a secret from a file named by a `*_file` key (a Kubernetes secret mount): the
/// whole file, without its final line break.
pub(crate) fn read_secret_file(key: &str, path: &str) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::invalid(key, format!("cannot read {path}: {e}")))?;
    let text = text.strip_suffix('\n').unwrap_or(&text);
    Ok(text.strip_suffix('\r').unwrap_or(text).to_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("db.internal".into()),
            "PW" => Some("p\"w\\1".into()),
            "EMPTY" => Some(String::new()),
            "N" => Some("7".into()),
            _ => None,
        }
    }

    fn x(text: &str) -> Result<String, ConfigError> {
        expand(text, &env)
    }

    #[test]
    fn variables_and_defaults() {
        assert_eq!(
            x("a = \"${HOST}:5432\"").unwrap(),
            "a = \"db.internal:5432\""
        );
        assert_eq!(x("a = \"${NOPE:-x}\"").unwrap(), "a = \"x\"");
        assert_eq!(x("a = \"${EMPTY:-d}\"").unwrap(), "a = \"d\"");
        assert_eq!(x("a = \"${EMPTY}\"").unwrap(), "a = \"\"");
        assert_eq!(x("n = ${N}").unwrap(), "n = 7");
        assert_eq!(x("a = \"$${HOST}\"").unwrap(), "a = \"${HOST}\"");
    }

    #[test]
    fn values_are_escaped_for_the_string_they_land_in() {
        let out = x("p = \"${PW}\"").unwrap();
        assert_eq!(out, r#"p = "p\"w\\1""#);
        let parsed: toml::Table = toml::from_str(&out).unwrap();
        assert_eq!(parsed["p"].as_str(), Some("p\"w\\1"));
        assert_eq!(x("p = '${HOST}'").unwrap(), "p = 'db.internal'");
        assert!(x("p = '${PW}'").is_ok(), "no quote or newline: fine");
    }

    #[test]
    fn comments_are_not_expanded_and_unset_variables_are_errors() {
        assert_eq!(x("# ${NOPE}\na = 1").unwrap(), "# ${NOPE}\na = 1");
        let e = x("a = 1\nb = \"${NOPE}\"").unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("NOPE is not set"), "{e}");
        assert!(x("b = \"${bad-name}\"").is_err());
        assert!(x("b = \"${HOST\"").is_err());
    }
}
