//! The upstream PostgreSQL server a database is pooled to, parsed from a URL.

use std::fmt;
use std::str::FromStr;

/// Port used when an upstream URL does not name one.
pub const DEFAULT_PORT: u16 = 5432;

/// Why an upstream URL was rejected. Messages never contain the password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamUrlError {
    /// The text is not a URL at all (or has e.g. an invalid port).
    #[error("not a valid URL: {0} (expected postgres://user:password@host:port/database)")]
    Syntax(String),
    /// The scheme is neither `postgres` nor `postgresql`.
    #[error("unsupported scheme {0:?} (expected postgres:// or postgresql://)")]
    Scheme(String),
    /// No host was given.
    #[error("missing host (expected postgres://user:password@host:port/database)")]
    MissingHost,
    /// Neither a user name nor a database name was given.
    #[error("a URL without a user name (clients' own user names are used) must name the database")]
    MissingDatabase,
    /// The path names more than one segment.
    #[error("the path must be a single database name")]
    Path,
    /// Query parameters or a fragment were given; they are not supported.
    #[error("query parameters and fragments are not supported")]
    Query,
    /// A percent-encoded component is not valid UTF-8 or has a bad escape.
    #[error("invalid percent-encoding in the {0}")]
    Encoding(&'static str),
}

/// Connection target for one pooled database: where the proxy connects and as whom.
///
/// Parsed from `postgres://user:password@host:port/database`. `Display` and
/// `Debug` redact the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Upstream {
    /// Host name or IP address of the PostgreSQL server (IPv6 without brackets).
    pub host: String,
    /// TCP port of the PostgreSQL server.
    pub port: u16,
    /// User name the proxy logs in with; empty when the URL names none, and each client's
    /// own user name is used (see [`Upstream::forwards_user`]).
    pub user: String,
    /// Password the proxy logs in with, if any.
    pub password: Option<String>,
    /// Database name on the server.
    pub database: String,
}

impl Upstream {
    /// Parses an upstream URL (`postgres://` or `postgresql://`).
    ///
    /// The port defaults to 5432 and the database to the user name; user,
    /// password and database are percent-decoded.
    pub fn parse(text: &str) -> Result<Self, UpstreamUrlError> {
        let url = url::Url::parse(text.trim()).map_err(|e| match e {
            url::ParseError::EmptyHost => UpstreamUrlError::MissingHost,
            other => UpstreamUrlError::Syntax(other.to_string()),
        })?;
        let scheme = url.scheme();
        if scheme != "postgres" && scheme != "postgresql" {
            return Err(UpstreamUrlError::Scheme(scheme.to_owned()));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(UpstreamUrlError::Query);
        }
        let host = match url.host() {
            Some(url::Host::Domain(domain)) => percent_decode(domain, "host")?,
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            None => String::new(),
        };
        if host.is_empty() {
            return Err(UpstreamUrlError::MissingHost);
        }
        let user = percent_decode(url.username(), "user name")?;
        let password = url
            .password()
            .map(|p| percent_decode(p, "password"))
            .transpose()?;
        let path = url.path().strip_prefix('/').unwrap_or(url.path());
        if path.contains('/') {
            return Err(UpstreamUrlError::Path);
        }
        let database = match percent_decode(path, "database name")? {
            db if db.is_empty() && user.is_empty() => {
                return Err(UpstreamUrlError::MissingDatabase)
            }
            db if db.is_empty() => user.clone(),
            db => db,
        };
        Ok(Self {
            host,
            port: url.port().unwrap_or(DEFAULT_PORT),
            user,
            password,
            database,
        })
    }

    /// Whether the URL names no user, so that each client logs in upstream as itself
    /// (PgBouncer's database entry without `user=`).
    pub fn forwards_user(&self) -> bool {
        self.user.is_empty()
    }

    /// This upstream as `user` (a client's own name, for [`Upstream::forwards_user`]).
    pub fn as_user(&self, user: &str) -> Self {
        Self {
            user: user.to_owned(),
            password: None,
            ..self.clone()
        }
    }

    /// Host and port as `host:port`, with brackets around IPv6 addresses.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for Upstream {
    type Err = UpstreamUrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Shows the URL with the password replaced by `***`.
impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("postgres://")?;
        if !self.user.is_empty() {
            f.write_str(&self.user)?;
            if self.password.is_some() {
                f.write_str(":***")?;
            }
            f.write_str("@")?;
        }
        write!(f, "{}/{}", self.address(), self.database)
    }
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("database", &self.database)
            .finish()
    }
}

/// Decodes `%XX` escapes; `what` names the component for error messages.
fn percent_decode(text: &str, what: &'static str) -> Result<String, UpstreamUrlError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or(UpstreamUrlError::Encoding(what))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| UpstreamUrlError::Encoding(what))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Upstream {
        Upstream::parse(text).expect("valid upstream")
    }

    #[test]
    fn parses_full_url() {
        let up = parse("postgres://app:secret@db.example.com:6543/appdb");
        assert_eq!(up.host, "db.example.com");
        assert_eq!(up.port, 6543);
        assert_eq!(up.user, "app");
        assert_eq!(up.password.as_deref(), Some("secret"));
        assert_eq!(up.database, "appdb");
    }

    #[test]
    fn defaults_port_and_database() {
        let up = parse("postgresql://alice@localhost");
        assert_eq!(up.port, 5432);
        assert_eq!(up.database, "alice");
        assert_eq!(up.password, None);
        assert_eq!(parse("postgres://alice@localhost/").database, "alice");
    }

    #[test]
    fn percent_decodes_components() {
        let up = parse("postgres://us%40er:p%40ss%3Aw%2Frd%25@127.0.0.1/my%20db");
        assert_eq!(up.user, "us@er");
        assert_eq!(up.password.as_deref(), Some("p@ss:w/rd%"));
        assert_eq!(up.database, "my db");
        let up = parse("postgres://u:%C3%A9t%C3%A9@h/d");
        assert_eq!(up.password.as_deref(), Some("été"));
    }

    #[test]
    fn ipv6_host() {
        let up = parse("postgres://u:p@[::1]:5433/d");
        assert_eq!(up.host, "::1");
        assert_eq!(up.address(), "[::1]:5433");
        assert_eq!(up.to_string(), "postgres://u:***@[::1]:5433/d");
    }

    #[test]
    fn display_and_debug_redact_password() {
        let up = parse("postgres://app:hunter2@127.0.0.1:5432/app");
        assert_eq!(up.to_string(), "postgres://app:***@127.0.0.1:5432/app");
        let debug = format!("{up:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("***"));
        let no_pw = parse("postgres://app@127.0.0.1/app");
        assert_eq!(no_pw.to_string(), "postgres://app@127.0.0.1:5432/app");
    }

    #[test]
    fn rejects_bad_urls() {
        assert_eq!(
            Upstream::parse("mysql://u:p@h/d"),
            Err(UpstreamUrlError::Scheme("mysql".into()))
        );
        assert_eq!(
            Upstream::parse("postgres://h:5432"),
            Err(UpstreamUrlError::MissingDatabase)
        );
        let forwarding = Upstream::parse("postgres://h:5432/d").expect("a URL without a user");
        assert!(forwarding.forwards_user());
        assert_eq!(forwarding.to_string(), "postgres://h:5432/d");
        assert_eq!(forwarding.as_user("alice").user, "alice");
        assert_eq!(
            Upstream::parse("postgres://u:p@/d"),
            Err(UpstreamUrlError::MissingHost)
        );
        assert_eq!(
            Upstream::parse("postgres:///d"),
            Err(UpstreamUrlError::MissingHost)
        );
        assert_eq!(
            Upstream::parse("postgres://u@h/a/b"),
            Err(UpstreamUrlError::Path)
        );
        assert_eq!(
            Upstream::parse("postgres://u@h/d?sslmode=disable"),
            Err(UpstreamUrlError::Query)
        );
        assert_eq!(
            Upstream::parse("postgres://u:%zz@h/d"),
            Err(UpstreamUrlError::Encoding("password"))
        );
        assert!(matches!(
            Upstream::parse("not a url"),
            Err(UpstreamUrlError::Syntax(_))
        ));
        assert!(matches!(
            Upstream::parse("postgres://u:p@h:99999/d"),
            Err(UpstreamUrlError::Syntax(_))
        ));
    }

    #[test]
    fn errors_never_echo_password() {
        for text in [
            "postgres://u:topsecret@h:99999/d",
            "mysql://u:topsecret@h/d",
        ] {
            let err = Upstream::parse(text).expect_err("invalid");
            assert!(!err.to_string().contains("topsecret"));
        }
    }
}
