//! PgBouncer's `auth_file` (userlist.txt): one user per line, `"name" "secret"`, each
//! field in double quotes with `""` for a quote inside; further fields are ignored, as
//! PgBouncer ignores them. The secret is what `[[postgres.users]] password` accepts: a
//! SCRAM verifier, an md5 hash or a plaintext password. Blank lines and lines starting
//! with `;` or `#` are comments; any other line that does not parse is an error naming it.

/// The (name, secret) pairs of a userlist file, in file order.
pub(crate) fn parse(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut users = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        let bad = |what: &str| format!("line {}: {what} (expected \"user\" \"secret\")", i + 1);
        let (name, rest) = quoted(line).ok_or_else(|| bad("no quoted user name"))?;
        let (secret, _) = quoted(rest.trim_start()).ok_or_else(|| bad("no quoted secret"))?;
        if name.is_empty() {
            return Err(bad("empty user name"));
        }
        users.push((name, secret));
    }
    Ok(users)
}

/// A `"..."` field at the start of `s` (with `""` for `"`) and what follows it.
fn quoted(s: &str) -> Option<(String, &str)> {
    let mut rest = s.strip_prefix('"')?;
    let mut out = String::new();
    loop {
        let end = rest.find('"')?;
        out.push_str(&rest[..end]);
        rest = &rest[end + 1..];
        match rest.strip_prefix('"') {
            Some(after) => {
                out.push('"');
                rest = after;
            }
            None => return Some((out, rest)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgbouncer_userlists_parse() {
        let text = "; comment\n# another\n\n\"app\" \"SCRAM-SHA-256$4096:c2FsdA==$a:b\"\n\
                    \"md5user\" \"md5d41d8cd98f00b204e9800998ecf8427e\" \"ignored\"\n\
                    \"odd\"\"name\" \"pl\"\"ain\"\n";
        let users = parse(text).expect("parses");
        assert_eq!(
            users,
            vec![
                ("app".into(), "SCRAM-SHA-256$4096:c2FsdA==$a:b".into()),
                (
                    "md5user".into(),
                    "md5d41d8cd98f00b204e9800998ecf8427e".into()
                ),
                ("odd\"name".into(), "pl\"ain".into()),
            ]
        );
    }

    #[test]
    fn malformed_lines_are_named() {
        for bad in ["app secret", "\"app\" secret", "\"app", "\"\" \"x\""] {
            let e = parse(&format!("\"ok\" \"1\"\n{bad}\n")).expect_err(bad);
            assert!(e.starts_with("line 2:"), "{bad}: {e}");
        }
    }
}
