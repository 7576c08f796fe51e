//! Where the upstream is and who Sluice is there: the upstream URI read with the MongoDB
//! driver's own option parser.

use std::time::Duration;

use mongodb::options::{AuthMechanism, ClientOptions, ServerAddress};
use sluice_tls::MongoTlsOptions;

use super::MongoUpstreamError;
use crate::scram_client::Mechanism;
use crate::wire::Compressor;

/// Where the upstream is and who Sluice is there, from the upstream URI.
#[derive(Clone)]
pub struct Target {
    /// Seed hosts, `host:port`, tried in order; the first writable primary wins.
    pub hosts: Vec<String>,
    /// `(user, password, authSource, mechanism)` when the URI has credentials.
    pub credential: Option<Credential>,
    /// `appName` sent in the handshake.
    pub app_name: String,
    /// Set when the URI asks for TLS (`tls=true` / `ssl=true`, or `mongodb+srv`).
    pub tls: Option<tokio_rustls::TlsConnector>,
    /// Watch the replica set (follow the primary, route `$readPreference`): several seed
    /// hosts or `replicaSet=`, and no `directConnection=true`.
    pub monitor: bool,
    /// How often the replica set is checked (`heartbeatFrequencyMS`, default 10 s).
    pub heartbeat: Duration,
    /// Compressors offered in the handshake, in order (`[mongo] compressors`; the URI's
    /// own `compressors` option is not read). Empty: no compression.
    pub compressors: Vec<Compressor>,
    /// `replicaSet`: members reporting another `setName` are dropped.
    pub set_name: Option<String>,
    /// The newest `$clusterTime` the deployment gossiped (shared by every clone: the
    /// pools, the monitor and Sluice's `hello`).
    pub cluster_time: std::sync::Arc<crate::cluster_time::ClusterClock>,
}

/// Login data for the upstream.
#[derive(Clone)]
pub struct Credential {
    /// User name.
    pub user: String,
    /// Password.
    pub password: String,
    /// Database the user is defined in (`authSource`, default `admin`).
    pub source: String,
    /// Mechanism from the URI (`None`: negotiate SCRAM-SHA-256, else SCRAM-SHA-1).
    pub mechanism: Option<Mechanism>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("hosts", &self.hosts)
            .field("user", &self.credential.as_ref().map(|c| &c.user))
            .field("tls", &self.tls.is_some())
            .field("compressors", &self.compressors)
            .finish()
    }
}

impl Target {
    /// Parses the upstream URI with the MongoDB driver's own option parser (which also
    /// resolves `mongodb+srv`).
    pub async fn parse(uri: &str) -> Result<Target, MongoUpstreamError> {
        let options = ClientOptions::parse(uri)
            .await
            .map_err(|e| MongoUpstreamError::Uri(e.to_string()))?;
        let tls = match &options.tls {
            Some(mongodb::options::Tls::Enabled(t)) => {
                Some(sluice_tls::mongo_connector(&MongoTlsOptions {
                    ca_file: t.ca_file_path.clone(),
                    allow_invalid_certificates: t.allow_invalid_certificates.unwrap_or(false),
                    certificate_key_file: t.cert_key_file_path.clone(),
                })?)
            }
            _ => None,
        };
        let hosts = hosts(&options)?;
        let credential = credential(&options)?;
        let monitor = options.direct_connection != Some(true)
            && (hosts.len() > 1 || options.repl_set_name.is_some());
        Ok(Target {
            hosts,
            credential,
            monitor,
            heartbeat: options.heartbeat_freq.unwrap_or(Duration::from_secs(10)),
            set_name: options.repl_set_name.clone(),
            cluster_time: Default::default(),
            app_name: options.app_name.unwrap_or_else(|| "sluice".into()),
            tls,
            compressors: Vec::new(),
        })
    }
}

/// The seed hosts as `host:port`.
fn hosts(options: &ClientOptions) -> Result<Vec<String>, MongoUpstreamError> {
    options
        .hosts
        .iter()
        .map(|h| match h {
            ServerAddress::Tcp { host, port } => Ok(format!("{host}:{}", port.unwrap_or(27017))),
            other => Err(MongoUpstreamError::Uri(format!(
                "unsupported host {other} (TCP hosts only)"
            ))),
        })
        .collect()
}

/// Sluice's login from the URI, if it has a user.
fn credential(options: &ClientOptions) -> Result<Option<Credential>, MongoUpstreamError> {
    let Some(c) = &options.credential else {
        return Ok(None);
    };
    let user = c.username.clone().unwrap_or_default();
    let mechanism = match &c.mechanism {
        None => None,
        Some(AuthMechanism::ScramSha256) => Some(Mechanism::Sha256),
        Some(AuthMechanism::ScramSha1) => Some(Mechanism::Sha1),
        Some(other) => {
            return Err(MongoUpstreamError::Uri(format!(
                "authMechanism {other:?} is not supported (SCRAM-SHA-256 or SCRAM-SHA-1)"
            )))
        }
    };
    let source = c
        .source
        .clone()
        .or_else(|| options.default_database.clone())
        .unwrap_or_else(|| "admin".into());
    Ok((!user.is_empty()).then(|| Credential {
        user,
        password: c.password.clone().unwrap_or_default(),
        source,
        mechanism,
    }))
}
