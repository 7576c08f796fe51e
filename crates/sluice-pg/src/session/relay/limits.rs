//! The time and size limits of one client, from the configuration it connected under:
//! `max_packet_size` and the idle timeouts ([`Limits`]), and `query_timeout` /
//! `transaction_timeout` with when what they bound began ([`Since`]).

/// The hard time limits of one client and when the running request and transaction began.
#[derive(Debug, Default)]
pub(crate) struct Since {
    /// `query_timeout`.
    pub(super) query: Option<std::time::Duration>,
    /// `transaction_timeout`.
    pub(super) max_transaction: Option<std::time::Duration>,
    /// Since when a request has waited for the server.
    pub(super) request: Option<tokio::time::Instant>,
    /// Since when the client's transaction has been open.
    pub(super) transaction: Option<tokio::time::Instant>,
}

impl Since {
    /// The limits of `pg`, if either is set.
    pub(super) fn from_config(pg: &sluice_config::PostgresConfig) -> Option<Box<Self>> {
        let nonzero = |d: std::time::Duration| (!d.is_zero()).then_some(d);
        let (query, max_transaction) = (nonzero(pg.query_timeout), nonzero(pg.transaction_timeout));
        (query.is_some() || max_transaction.is_some()).then(|| {
            Box::new(Since {
                query,
                max_transaction,
                ..Since::default()
            })
        })
    }
}

/// Per-client limits from the configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// `max_packet_size`.
    pub max_packet: usize,
    /// `client_idle_timeout` (None: disabled).
    pub client_idle: Option<std::time::Duration>,
    /// `idle_transaction_timeout` (None: disabled).
    pub idle_transaction: Option<std::time::Duration>,
    /// `server_check_delay`, when `server_check_query` is set (None: no check).
    pub check_delay: Option<std::time::Duration>,
}

impl Limits {
    pub(super) fn from_config(pg: &sluice_config::PostgresConfig) -> Self {
        let nonzero = |d: std::time::Duration| (!d.is_zero()).then_some(d);
        Limits {
            max_packet: pg.max_packet_size,
            client_idle: nonzero(pg.client_idle_timeout),
            idle_transaction: nonzero(pg.idle_transaction_timeout),
            check_delay: (!pg.server_check_query.is_empty()).then_some(pg.server_check_delay),
        }
    }
}

impl super::Relay<'_> {
    /// The client's size and time limits, from the configuration it logged in under (read
    /// when needed rather than copied into every client's state).
    pub(super) fn limits(&self) -> Limits {
        Limits::from_config(&self.admitted.ctx().config.postgres)
    }
}
