//! Where a TOML text came from, and the conversions of its values that point an error at
//! the line it is on (durations, listen addresses).

use std::net::SocketAddr;
use std::time::Duration;

use toml::{Spanned, Value};

use crate::duration::{parse_duration, seconds_to_duration};
use crate::values::parse_listen;
use crate::ConfigError;

/// Where the TOML text came from, used to point error messages at a line.
pub(crate) struct Source<'a> {
    pub text: &'a str,
    pub origin: Option<&'a str>,
}

impl Source<'_> {
    /// Builds an error for `key` whose value starts at byte `offset`.
    pub fn error(&self, key: &str, offset: usize, message: impl std::fmt::Display) -> ConfigError {
        let line = self
            .text
            .get(..offset)
            .map_or(1, |before| before.matches('\n').count() + 1);
        let at = match self.origin {
            Some(origin) => format!("{origin}:{line}"),
            None => format!("line {line}"),
        };
        ConfigError::invalid(key, format!("{message} ({at})"))
    }

    pub fn duration(&self, key: &str, value: &Spanned<Value>) -> Result<Duration, ConfigError> {
        let result = match value.get_ref() {
            Value::String(text) => parse_duration(text).map_err(|e| e.to_string()),
            Value::Integer(secs) => u64::try_from(*secs)
                .map(Duration::from_secs)
                .map_err(|_| format!("not a duration: {secs} (must not be negative)")),
            Value::Float(secs) => {
                seconds_to_duration(*secs).map_err(|why| format!("not a duration: {secs} ({why})"))
            }
            other => Err(format!(
                "expected a duration like \"30s\" or a number of seconds, found a {}",
                other.type_str()
            )),
        };
        result.map_err(|message| self.error(key, value.span().start, message))
    }

    /// Overwrites `slot` with the duration the file gives for `key`, if it gives one.
    pub fn set_duration(
        &self,
        slot: &mut Duration,
        key: &str,
        value: &Option<Spanned<Value>>,
    ) -> Result<(), ConfigError> {
        if let Some(value) = value {
            *slot = self.duration(key, value)?;
        }
        Ok(())
    }

    /// Overwrites `slot` with the listen address the file gives for `key`, if any.
    pub fn set_listen(
        &self,
        slot: &mut SocketAddr,
        key: &str,
        value: &Option<Spanned<String>>,
    ) -> Result<(), ConfigError> {
        if let Some(listen) = value {
            *slot = parse_listen(listen.get_ref())
                .map_err(|m| self.error(key, listen.span().start, m))?;
        }
        Ok(())
    }
}
