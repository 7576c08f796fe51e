//! The configuration being assembled: defaults, then each layer (file, environment,
//! overrides) sets keys on it, then derived defaults and validation.

use crate::duration::parse_duration;
use crate::values::{parse_count, parse_listen};
use crate::{Config, ConfigError};

/// A configuration being assembled layer by layer.
pub(crate) struct Builder {
    pub(crate) config: Config,
    /// Whether any layer set `postgres.min_pool_size`; if not, the default is
    /// lowered to fit a smaller `pool_size` instead of failing validation.
    pub(crate) min_pool_size_explicit: bool,
    /// The same for `mongo.min_pool_size`.
    pub(crate) mongo_min_pool_size_explicit: bool,
}

impl Builder {
    pub(crate) fn new() -> Self {
        Self {
            config: Config::default(),
            min_pool_size_explicit: false,
            mongo_min_pool_size_explicit: false,
        }
    }

    /// Sets the dotted `key` from `raw` text; errors name `source` (an
    /// environment variable or override key). Returns `false` for keys that
    /// cannot be set this way.
    pub(crate) fn set(&mut self, key: &str, source: &str, raw: &str) -> Result<bool, ConfigError> {
        let invalid = |message: String| ConfigError::invalid(source, message);
        let pg = &mut self.config.postgres;
        match key {
            "postgres.listen" => pg.listen = parse_listen(raw).map_err(invalid)?,
            "admin.listen" => self.config.admin.listen = parse_listen(raw).map_err(invalid)?,
            "admin.token" => self.config.admin.token = Some(raw.to_owned()),
            "postgres.pool_mode" => pg.pool_mode = raw.parse().map_err(invalid)?,
            "postgres.max_client_conn" => pg.max_client_conn = parse_count(raw).map_err(invalid)?,
            "postgres.pool_size" => pg.pool_size = parse_count(raw).map_err(invalid)?,
            "postgres.min_pool_size" => {
                pg.min_pool_size = parse_count(raw).map_err(invalid)?;
                self.min_pool_size_explicit = true;
            }
            "postgres.pool_timeout" => {
                pg.pool_timeout = parse_duration(raw).map_err(|e| invalid(e.to_string()))?;
            }
            // The MongoDB variables size a `[mongo]` section; without one (no upstream to
            // pool) they are ignored: services often set them for their own client.
            "mongo.max_pool_size" | "mongo.min_pool_size" => {
                let n = parse_count(raw).map_err(invalid)?;
                if let Some(mongo) = self.config.mongo.as_mut() {
                    if key == "mongo.max_pool_size" {
                        mongo.max_pool_size = n;
                    } else {
                        mongo.min_pool_size = n;
                        self.mongo_min_pool_size_explicit = true;
                    }
                }
            }
            "general.worker_threads" => {
                self.config.general.worker_threads = raw
                    .trim()
                    .parse()
                    .map_err(|_| invalid(format!("not a thread count: {raw:?}")))?;
            }
            "general.shutdown_timeout" => {
                self.config.general.shutdown_timeout =
                    parse_duration(raw).map_err(|e| invalid(e.to_string()))?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Applies derived defaults and validates.
    pub(crate) fn finish(mut self) -> Result<Config, ConfigError> {
        let pg = &mut self.config.postgres;
        if !self.min_pool_size_explicit {
            pg.min_pool_size = pg.min_pool_size.min(pg.pool_size);
        }
        if let (Some(mongo), false) = (
            self.config.mongo.as_mut(),
            self.mongo_min_pool_size_explicit,
        ) {
            mongo.min_pool_size = mongo.min_pool_size.min(mongo.max_pool_size);
        }
        self.config.validate()?;
        Ok(self.config)
    }
}
