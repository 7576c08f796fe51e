//! What every MongoDB client session shares: the pool, transaction pins, client
//! credentials, the client TLS acceptor, the long-poll bound and Sluice's router identity.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use bson::oid::ObjectId;
use parking_lot::RwLock;
use sluice_auth::{ScramVerifier, Secret};
use sluice_config::{MongoCompressor, MongoConfig};
use sluice_stats::Registry;
use thiserror::Error;
use tokio::sync::Semaphore;

use crate::guards::{GuardSettings, Guards};
use crate::hello::TopologyVersion;
use crate::pins::Pins;
use crate::pool::{MongoPool, PoolSettings};
use crate::replicas::Replicas;
use crate::tls::ClientTls;
use crate::upstream::{MongoUpstreamError, ServerInfo, Target};
use crate::wire::Compressor;

/// A `[mongo]` section that cannot be started.
#[derive(Debug, Error)]
pub enum ContextError {
    /// The upstream URI.
    #[error(transparent)]
    Upstream(#[from] MongoUpstreamError),
    /// A `[[mongo.users]]` password is not a usable secret.
    #[error(
        "mongo.users: password of user \"{user}\" is not plaintext or a SCRAM-SHA-256 verifier"
    )]
    BadSecret {
        /// The user.
        user: String,
    },
    /// The `[mongo.tls]` certificate or key cannot be loaded.
    #[error("mongo.tls: {0}")]
    Tls(#[from] sluice_tls::TlsError),
}

/// Shared state of the MongoDB listener.
pub struct MongoContext {
    /// The `[mongo]` settings.
    pub config: MongoConfig,
    /// The pool of connections to the primary (or the one upstream server).
    pub pool: MongoPool,
    /// Replica-set state: the primary's address, member pools, cursors on members.
    pub replicas: Arc<Replicas>,
    /// Pinned transactions.
    pub pins: Pins,
    /// Client credentials (SCRAM verifiers derived once).
    pub users: Arc<HashMap<String, ScramVerifier>>,
    /// Whether clients must log in before running commands.
    pub auth_required: bool,
    /// Bounds how many long-polling getMores may hold upstream connections at once:
    /// `max(1, max_pool_size / 2)`, so change streams can never take the whole pool.
    pub long_polls: Arc<Semaphore>,
    /// `max_client_conn`, the login and idle timeouts (live: reload swaps them) and the
    /// count of open client connections.
    pub guards: Arc<Guards>,
    /// Sluice's `topologyVersion.processId`.
    pub process_id: ObjectId,
    /// The newest `$clusterTime` the upstream gossiped (its `hello` shows it).
    pub cluster_time: Arc<crate::cluster_time::ClusterClock>,
    /// TLS towards clients (`None`: `disable`); swapped on reload.
    tls: RwLock<Option<ClientTls>>,
    next_connection_id: AtomicI64,
}

impl MongoContext {
    /// Parses the upstream URI and builds the (empty) pool.
    pub async fn new(
        config: MongoConfig,
        stats: &Arc<Registry>,
    ) -> Result<Arc<MongoContext>, ContextError> {
        let tls = ClientTls::load(&config.tls)?;
        let mut target = Target::parse(&config.upstream).await?;
        target.compressors = config.compressors.iter().map(|&c| compressor(c)).collect();
        let (users, auth_required) = client_users(&config, &target)?;
        let settings = PoolSettings {
            name: "mongo".into(),
            user: target
                .credential
                .as_ref()
                .map(|c| c.user.clone())
                .unwrap_or_default(),
            max_size: config.max_pool_size,
            min_size: config.min_pool_size,
            timeout: config.pool_timeout,
            connect_timeout: config.connect_timeout,
            tracks_health: true,
        };
        let replicas = Arc::new(Replicas::new(
            target.clone(),
            settings.clone(),
            stats.clone(),
        ));
        let cluster_time = target.cluster_time.clone();
        let pool = MongoPool::new(settings, target);
        stats.register_mongo(Arc::new(pool.clone()));
        let guards = Arc::new(Guards::new(GuardSettings::from_config(&config)));
        Ok(Arc::new(MongoContext {
            guards,
            long_polls: Arc::new(Semaphore::new(long_poll_limit(config.max_pool_size))),
            config,
            pool,
            replicas,
            pins: Pins::default(),
            users: Arc::new(users),
            auth_required,
            process_id: ObjectId::new(),
            cluster_time,
            tls: RwLock::new(tls),
            next_connection_id: AtomicI64::new(1),
        }))
    }

    /// Applies a reloaded `[mongo]` section: pool sizes and `pool_timeout` change online
    /// (and the long-poll bound with them), and so do `max_client_conn`,
    /// `client_login_timeout` and `client_idle_timeout` (for open connections too, at their
    /// next wait; a lower cap closes nobody). Which keys need a restart instead is
    /// `sluice_config::KEYS`'s business.
    pub fn reload(&self, new: &MongoConfig) {
        // The old size from the same atomic swap, so concurrent reloads (SIGHUP, HTTP,
        // console) never apply one long-poll delta twice.
        let old_max = self
            .pool
            .resize(new.max_pool_size, new.min_pool_size, new.pool_timeout);
        self.replicas.resize(new.max_pool_size, new.pool_timeout);
        crate::pool::resize_semaphore(
            &self.long_polls,
            long_poll_limit(old_max),
            long_poll_limit(new.max_pool_size),
        );
        self.guards.set(GuardSettings::from_config(new));
    }

    /// The client TLS setting new connections get (`None`: `disable`).
    pub fn client_tls(&self) -> Option<ClientTls> {
        self.tls.read().clone()
    }

    /// Installs a client TLS setting loaded by [`ClientTls::load`] (on reload: new
    /// connections get it; open ones keep theirs). Loading first and installing after lets
    /// a reload reject bad certificate files before it changes anything.
    pub fn set_client_tls(&self, tls: Option<ClientTls>) {
        *self.tls.write() = tls;
    }

    /// Sluice's `topologyVersion` as its `hello` shows it now.
    pub fn topology_version(&self) -> TopologyVersion {
        TopologyVersion {
            process_id: self.process_id,
            counter: self.pool.info_changes(),
        }
    }

    /// A new client connection's `connectionId`.
    pub fn next_connection_id(&self) -> i64 {
        self.next_connection_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The upstream's wire versions and limits: from the pool, or (never reached yet) by
    /// opening a connection, or conservative defaults when the upstream is down.
    pub async fn server_info(&self) -> ServerInfo {
        if let Some(info) = self.pool.server_info() {
            return info;
        }
        match self.pool.checkout("hello").await {
            Ok(conn) => conn.info.clone(),
            Err(_) => ServerInfo::default(),
        }
    }
}

/// The client credentials (SCRAM verifiers) and whether clients must log in: the
/// `[[mongo.users]]`, or without any, the upstream URI's user (login is then optional).
fn client_users(
    config: &MongoConfig,
    target: &Target,
) -> Result<(HashMap<String, ScramVerifier>, bool), ContextError> {
    let mut users = HashMap::new();
    for u in &config.users {
        let verifier = Secret::parse(&u.password)
            .ok()
            .and_then(|s| s.scram_verifier())
            .ok_or_else(|| ContextError::BadSecret {
                user: u.name.clone(),
            })?;
        users.insert(u.name.clone(), verifier);
    }
    let auth_required = !users.is_empty();
    if users.is_empty() {
        // Without [[mongo.users]] login is optional; a client that does log in (an
        // unchanged MONGODB_URI) uses the upstream URI's credentials.
        if let Some(c) = &target.credential {
            if let Some(v) = Secret::Plain(c.password.clone()).scram_verifier() {
                users.insert(c.user.clone(), v);
            }
        }
    }
    Ok((users, auth_required))
}

/// The wire codec's compressor for a `[mongo] compressors` entry.
fn compressor(c: MongoCompressor) -> Compressor {
    match c {
        MongoCompressor::Snappy => Compressor::Snappy,
        MongoCompressor::Zlib => Compressor::Zlib,
        MongoCompressor::Zstd => Compressor::Zstd,
    }
}

/// How many long-polling getMores may hold upstream connections: half the pool, at least 1.
fn long_poll_limit(max_pool_size: usize) -> usize {
    (max_pool_size / 2).max(1)
}
