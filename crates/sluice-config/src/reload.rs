//! How each configuration key is applied on reload: one table, [`KEYS`], that names every
//! key of the file (as a dotted TOML path) and says whether a changed value takes effect
//! at once ([`Apply::Live`]) or only after a restart ([`Apply::Restart`], with why), and
//! [`diff`], which compares two configurations and sorts the changed keys into those two
//! lists. A test walks the file schema and fails when a key is missing from the table.

use std::fmt;

use crate::Config;

mod compare;
use compare::{databases_differ, mongo_differs, names, user_settings_differ, users_differ};

/// When a changed key takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Apply {
    /// On reload: for new clients, the next checkout or the next connection opened.
    Live,
    /// Only after a restart; the text says why.
    Restart(&'static str),
}

/// One row of the table: a key, how it is applied and how to tell it changed.
pub struct Key {
    /// The dotted TOML path; `*` stands for each entry of an array of tables.
    pub path: &'static str,
    /// When a change takes effect.
    pub apply: Apply,
    /// Whether the key differs between two configurations.
    changed: fn(&Config, &Config) -> bool,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("path", &self.path)
            .field("apply", &self.apply)
            .finish_non_exhaustive()
    }
}

/// A key read straight from the typed configuration: `a.<fields> != b.<fields>`.
macro_rules! key {
    ($path:literal, $apply:expr, $($field:ident).+) => {
        Key {
            path: $path,
            apply: $apply,
            changed: |a, b| a.$($field).+ != b.$($field).+,
        }
    };
}

/// A key of each `[[postgres.databases]]` entry, compared between entries of one name.
macro_rules! db_key {
    ($path:literal, $apply:expr, $field:ident) => {
        Key {
            path: $path,
            apply: $apply,
            changed: |a, b| databases_differ(a, b, |x, y| x.$field != y.$field),
        }
    };
}

/// A key of each `[[postgres.user_settings]]` entry, compared between entries of one name.
macro_rules! user_key {
    ($path:literal, $field:ident) => {
        Key {
            path: $path,
            apply: Live,
            changed: |a, b| user_settings_differ(a, b, |x, y| x.$field != y.$field),
        }
    };
}

/// A key of the `[mongo]` section, compared when both configurations have one (the
/// section itself coming or going is [`MONGO_SECTION`]).
macro_rules! mongo_key {
    ($path:literal, $apply:expr, $field:ident) => {
        Key {
            path: $path,
            apply: $apply,
            changed: |a, b| mongo_differs(a, b, |x, y| x.$field != y.$field),
        }
    };
}

use Apply::{Live, Restart};

const LISTENER: Apply = Restart("the listening socket is bound at start");
const USERS: Apply = Restart("auth_query logs in as the auth_user it started with");
const MONGO: Apply = Restart("the MongoDB upstream and its credentials are set up at start");

/// Reported under "needs restart" when the `[mongo]` section is added or removed.
pub const MONGO_SECTION: &str = "mongo";

/// Every key of the configuration file and how a change to it is applied.
pub static KEYS: &[Key] = &[
    key!("general.shutdown_timeout", Live, general.shutdown_timeout),
    key!(
        "general.worker_threads",
        Restart("the runtime is built before anything else"),
        general.worker_threads
    ),
    key!("admin.enabled", LISTENER, admin.enabled),
    key!("admin.listen", LISTENER, admin.listen),
    key!(
        "admin.token",
        Restart("the admin listener keeps the token it started with"),
        admin.token
    ),
    // A `*_file` key is read into its value key; a change shows there.
    Key {
        path: "admin.token_file",
        apply: Restart("the admin listener keeps the token it started with"),
        changed: |_, _| false,
    },
    key!("postgres.listen", LISTENER, postgres.listen),
    key!("postgres.pool_mode", Live, postgres.pool_mode),
    key!("postgres.max_client_conn", Live, postgres.max_client_conn),
    key!(
        "postgres.max_db_client_connections",
        Live,
        postgres.max_db_client_connections
    ),
    key!(
        "postgres.max_user_client_connections",
        Live,
        postgres.max_user_client_connections
    ),
    key!(
        "postgres.max_db_connections",
        Live,
        postgres.max_db_connections
    ),
    key!(
        "postgres.max_user_connections",
        Live,
        postgres.max_user_connections
    ),
    key!("postgres.pool_size", Live, postgres.pool_size),
    key!("postgres.min_pool_size", Live, postgres.min_pool_size),
    key!("postgres.pool_timeout", Live, postgres.pool_timeout),
    // An alias of pool_timeout: a change is reported under that name.
    Key {
        path: "postgres.query_wait_timeout",
        apply: Live,
        changed: |_, _| false,
    },
    key!(
        "postgres.server_reset_query",
        Live,
        postgres.server_reset_query
    ),
    key!(
        "postgres.pin_session_state",
        Live,
        postgres.pin_session_state
    ),
    key!(
        "postgres.max_pinned_servers",
        Live,
        postgres.max_pinned_servers
    ),
    key!("postgres.auth_type", Live, postgres.auth_type),
    key!(
        "postgres.server_connect_timeout",
        Live,
        postgres.server_connect_timeout
    ),
    key!(
        "postgres.max_prepared_statements",
        Restart("statement caches of open server connections are sized at start"),
        postgres.max_prepared_statements
    ),
    key!("postgres.max_packet_size", Live, postgres.max_packet_size),
    key!(
        "postgres.prepared_statement_registry_size",
        Live,
        postgres.prepared_statement_registry_size
    ),
    key!(
        "postgres.client_login_timeout",
        Live,
        postgres.client_login_timeout
    ),
    key!(
        "postgres.client_idle_timeout",
        Live,
        postgres.client_idle_timeout
    ),
    key!(
        "postgres.idle_transaction_timeout",
        Live,
        postgres.idle_transaction_timeout
    ),
    key!(
        "postgres.server_idle_timeout",
        Live,
        postgres.server_idle_timeout
    ),
    key!("postgres.server_lifetime", Live, postgres.server_lifetime),
    key!(
        "postgres.server_login_retry",
        Live,
        postgres.server_login_retry
    ),
    key!("postgres.admin_users", Live, postgres.admin_users),
    key!("postgres.ban_time", Live, postgres.ban_time),
    key!(
        "postgres.health_check_interval",
        Live,
        postgres.health_check_interval
    ),
    key!("postgres.max_replica_lag", Live, postgres.max_replica_lag),
    key!("postgres.tls.mode", Live, postgres.tls.mode),
    key!("postgres.tls.cert_file", Live, postgres.tls.cert_file),
    key!("postgres.tls.key_file", Live, postgres.tls.key_file),
    Key {
        path: "postgres.databases.*.name",
        apply: Live,
        changed: |a, b| {
            names(&a.postgres.databases, |d| &d.name) != names(&b.postgres.databases, |d| &d.name)
        },
    },
    db_key!("postgres.databases.*.upstream", Live, upstream),
    // Read into the upstream's password; a change shows there.
    Key {
        path: "postgres.databases.*.password",
        apply: Live,
        changed: |_, _| false,
    },
    Key {
        path: "postgres.databases.*.password_file",
        apply: Live,
        changed: |_, _| false,
    },
    db_key!("postgres.databases.*.pool_size", Live, pool_size),
    db_key!("postgres.databases.*.min_pool_size", Live, min_pool_size),
    db_key!("postgres.databases.*.pool_mode", Live, pool_mode),
    db_key!(
        "postgres.databases.*.max_db_connections",
        Live,
        max_db_connections
    ),
    db_key!(
        "postgres.databases.*.max_db_client_connections",
        Live,
        max_db_client_connections
    ),
    db_key!("postgres.databases.*.sslmode", Live, sslmode),
    db_key!("postgres.databases.*.hosts.*.address", Live, hosts),
    db_key!("postgres.databases.*.hosts.*.role", Live, hosts),
    db_key!(
        "postgres.databases.*.read_write_split",
        Live,
        read_write_split
    ),
    db_key!("postgres.databases.*.sslrootcert", Live, sslrootcert),
    Key {
        path: "postgres.users.*.name",
        apply: Live,
        changed: |a, b| users_differ(&a.postgres.users, &b.postgres.users, false),
    },
    Key {
        path: "postgres.users.*.password",
        apply: Live,
        changed: |a, b| users_differ(&a.postgres.users, &b.postgres.users, true),
    },
    key!("postgres.auth_file", Live, postgres.auth_file),
    Key {
        path: "postgres.user_settings.*.name",
        apply: Live,
        changed: |a, b| {
            names(&a.postgres.user_settings, |u| &u.name)
                != names(&b.postgres.user_settings, |u| &u.name)
        },
    },
    user_key!("postgres.user_settings.*.pool_mode", pool_mode),
    user_key!("postgres.user_settings.*.pool_size", pool_size),
    user_key!(
        "postgres.user_settings.*.max_user_connections",
        max_user_connections
    ),
    user_key!(
        "postgres.user_settings.*.max_user_client_connections",
        max_user_client_connections
    ),
    key!("postgres.auth_user", USERS, postgres.auth_user),
    key!("postgres.auth_query", Live, postgres.auth_query),
    key!("postgres.auth_cache_ttl", Live, postgres.auth_cache_ttl),
    key!("postgres.query_timeout", Live, postgres.query_timeout),
    key!(
        "postgres.server_check_query",
        Live,
        postgres.server_check_query
    ),
    key!(
        "postgres.server_check_delay",
        Live,
        postgres.server_check_delay
    ),
    key!(
        "postgres.reserve_pool_size",
        Live,
        postgres.reserve_pool_size
    ),
    key!(
        "postgres.reserve_pool_timeout",
        Live,
        postgres.reserve_pool_timeout
    ),
    key!(
        "postgres.transaction_timeout",
        Live,
        postgres.transaction_timeout
    ),
    Key {
        path: "postgres.users.*.password_file",
        apply: Live,
        changed: |_, _| false,
    },
    mongo_key!("mongo.listen", LISTENER, listen),
    mongo_key!("mongo.upstream", MONGO, upstream),
    mongo_key!("mongo.max_pool_size", Live, max_pool_size),
    mongo_key!("mongo.min_pool_size", Live, min_pool_size),
    mongo_key!("mongo.pool_timeout", Live, pool_timeout),
    mongo_key!("mongo.connect_timeout", MONGO, connect_timeout),
    mongo_key!("mongo.max_client_conn", Live, max_client_conn),
    mongo_key!("mongo.client_login_timeout", Live, client_login_timeout),
    mongo_key!("mongo.client_idle_timeout", Live, client_idle_timeout),
    mongo_key!("mongo.compressors", MONGO, compressors),
    // Reload loads the certificate and key files again (a change of their contents too).
    Key {
        path: "mongo.tls.mode",
        apply: Live,
        changed: |a, b| mongo_differs(a, b, |x, y| x.tls.mode != y.tls.mode),
    },
    Key {
        path: "mongo.tls.cert_file",
        apply: Live,
        changed: |a, b| mongo_differs(a, b, |x, y| x.tls.cert_file != y.tls.cert_file),
    },
    Key {
        path: "mongo.tls.key_file",
        apply: Live,
        changed: |a, b| mongo_differs(a, b, |x, y| x.tls.key_file != y.tls.key_file),
    },
    Key {
        path: "mongo.users.*.name",
        apply: MONGO,
        changed: |a, b| mongo_differs(a, b, |x, y| users_differ(&x.users, &y.users, false)),
    },
    Key {
        path: "mongo.users.*.password",
        apply: MONGO,
        changed: |a, b| mongo_differs(a, b, |x, y| users_differ(&x.users, &y.users, true)),
    },
    Key {
        path: "mongo.users.*.password_file",
        apply: MONGO,
        changed: |_, _| false,
    },
];

impl Key {
    /// Looks a key up in [`KEYS`] by its dotted path.
    pub fn find(path: &str) -> Option<&'static Key> {
        KEYS.iter().find(|k| k.path == path)
    }
}

/// What a reload changes: the changed keys, split by when they take effect.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadPlan {
    /// Changed keys that take effect now.
    pub applied: Vec<&'static str>,
    /// Changed keys that take effect only after a restart.
    pub restart: Vec<&'static str>,
}

impl ReloadPlan {
    /// True when nothing changed.
    pub fn is_empty(&self) -> bool {
        self.applied.is_empty() && self.restart.is_empty()
    }
}

impl fmt::Display for ReloadPlan {
    /// `applied: a, b; needs restart: c`, or `no changes`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("no changes");
        }
        let list = |keys: &[&str]| match keys {
            [] => "none".to_owned(),
            keys => keys.join(", "),
        };
        write!(
            f,
            "applied: {}; needs restart: {}",
            list(&self.applied),
            list(&self.restart)
        )
    }
}

/// The keys that differ between `old` and `new`, each under `applied` or `restart` as
/// [`KEYS`] says, in table order.
pub fn diff(old: &Config, new: &Config) -> ReloadPlan {
    let mut plan = ReloadPlan::default();
    for key in KEYS.iter().filter(|k| (k.changed)(old, new)) {
        match key.apply {
            Live => plan.applied.push(key.path),
            Restart(_) => plan.restart.push(key.path),
        }
    }
    if old.mongo.is_some() != new.mongo.is_some() {
        plan.restart.push(MONGO_SECTION);
    }
    plan
}

/// Why a reload changed nothing; the running configuration stays in force.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new file (or environment) does not load or validate.
    #[error(transparent)]
    Config(#[from] crate::ConfigError),
    /// The new TLS certificate or key files could not be loaded.
    #[error(transparent)]
    Tls(Box<dyn std::error::Error + Send + Sync>),
    /// The proxy is shutting down.
    #[error("shutting down")]
    ShuttingDown,
}
