//! Tests of the reload table: it covers every key of the file schema (found by walking
//! the serde shape of [`RawConfig`], so a new field without a table row fails here), and
//! [`diff`] sorts changes into the right list.

use std::cell::RefCell;
use std::collections::BTreeSet;

use serde::de::value::{BorrowedStrDeserializer, Error};
use serde::de::{self, DeserializeSeed, Visitor};
use serde::Deserialize;

use crate::raw::RawConfig;
use crate::reload::{diff, Apply, Key, KEYS};
use crate::Config;

/// The name and fields `toml::Spanned` asks a deserializer for (a wrapper, not a key).
const SPANNED: &str = "$__serde_spanned_private_Spanned";
const SPANNED_VALUE: &str = "$__serde_spanned_private_value";

/// A deserializer that invents a value for every field a type asks for and records the
/// dotted path of each leaf: arrays of tables contribute `*`, options are always present.
struct Walker<'a> {
    path: String,
    out: &'a RefCell<BTreeSet<String>>,
}

impl<'a> Walker<'a> {
    fn child(&self, name: &str) -> Walker<'a> {
        let path = if self.path.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.path)
        };
        Walker {
            path,
            out: self.out,
        }
    }

    /// Records this path as a key (a list of plain values is one key, not `x.*`).
    fn leaf(&self) {
        let path = self.path.strip_suffix(".*").unwrap_or(&self.path);
        self.out.borrow_mut().insert(path.to_owned());
    }
}

/// Feeds a struct's fields, one value each, to its visitor.
struct Fields<'a> {
    walker: &'a Walker<'a>,
    fields: std::slice::Iter<'static, &'static str>,
    current: &'static str,
    spanned: bool,
}

impl<'de> de::MapAccess<'de> for Fields<'_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some(field) = self.fields.next() else {
            return Ok(None);
        };
        self.current = field;
        seed.deserialize(BorrowedStrDeserializer::new(field))
            .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let walker = if self.spanned {
            // Spanned's start and end are offsets, its value is the key itself.
            let path = if self.current == SPANNED_VALUE {
                self.walker.path.clone()
            } else {
                String::new()
            };
            Walker {
                path,
                out: self.walker.out,
            }
        } else {
            self.walker.child(self.current)
        };
        seed.deserialize(walker)
    }
}

/// One element of an array, under the path `array.*`.
struct OneElement<'a>(Option<Walker<'a>>);

impl<'de> de::SeqAccess<'de> for OneElement<'_> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        self.0.take().map(|w| seed.deserialize(w)).transpose()
    }
}

impl<'de> de::Deserializer<'de> for Walker<'_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        // toml::Value and other self-describing leaves: any integer will do.
        self.leaf();
        visitor.visit_u64(0)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.leaf();
        visitor.visit_bool(false)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.leaf();
        visitor.visit_str("")
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_some(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let element = self.child("*");
        visitor.visit_seq(OneElement(Some(element)))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_map(Fields {
            walker: &self,
            fields: fields.iter(),
            current: "",
            spanned: name == SPANNED,
        })
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.leaf();
        let first = variants.first().copied().unwrap_or_default();
        visitor.visit_enum(BorrowedStrDeserializer::new(first))
    }

    serde::forward_to_deserialize_any! {
        i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char bytes byte_buf unit
        unit_struct newtype_struct tuple tuple_struct map identifier ignored_any
    }
}

/// Every key path of the file schema.
fn schema_keys() -> BTreeSet<String> {
    let out = RefCell::new(BTreeSet::new());
    RawConfig::deserialize(Walker {
        path: String::new(),
        out: &out,
    })
    .expect("the walker satisfies every field");
    // Spanned's offsets were recorded under the empty path.
    let mut keys = out.into_inner();
    keys.remove("");
    keys
}

#[test]
fn walker_finds_nested_and_array_keys() {
    let keys = schema_keys();
    for path in [
        "postgres.client_idle_timeout",
        "postgres.tls.mode",
        "postgres.databases.*.pool_size",
        "postgres.admin_users",
        "mongo.max_pool_size",
        "mongo.users.*.password",
        "mongo.tls.cert_file",
    ] {
        assert!(keys.contains(path), "{path} not found in {keys:?}");
    }
}

#[test]
fn every_schema_key_is_in_the_table() {
    let missing: Vec<_> = schema_keys()
        .into_iter()
        .filter(|path| Key::find(path).is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "keys missing from the reload table in reload.rs (say Live or Restart): {missing:?}"
    );
}

#[test]
fn every_table_key_exists_once() {
    let schema = schema_keys();
    let mut seen = BTreeSet::new();
    for k in KEYS {
        assert!(
            schema.contains(k.path),
            "{} is not a key of the file",
            k.path
        );
        assert!(seen.insert(k.path), "{} is listed twice", k.path);
        if let Apply::Restart(why) = k.apply {
            assert!(!why.is_empty(), "{} needs a reason", k.path);
        }
    }
}

const BASE: &str = r#"
[postgres]
[[postgres.databases]]
name = "app"
upstream = "postgres://app:secret@127.0.0.1/app"
[[postgres.databases]]
name = "other"
upstream = "postgres://app:secret@127.0.0.1/other"
"#;

fn with(extra: &str) -> Config {
    // `[postgres]` keys go right after the section header.
    let text = BASE.replacen("[postgres]\n", &format!("[postgres]\n{extra}\n"), 1);
    Config::from_toml_str(&text).expect("valid config")
}

#[test]
fn unchanged_config_is_no_changes() {
    let plan = diff(&with(""), &with(""));
    assert!(plan.is_empty());
    assert_eq!(plan.to_string(), "no changes");
}

#[test]
fn changed_keys_land_in_their_lists() {
    let old = with("");
    let new = with("client_idle_timeout = \"1s\"\nlisten = \"127.0.0.1:7432\"\npool_size = 30");
    let plan = diff(&old, &new);
    assert_eq!(
        plan.applied,
        ["postgres.pool_size", "postgres.client_idle_timeout"]
    );
    assert_eq!(plan.restart, ["postgres.listen"]);
    assert_eq!(
        plan.to_string(),
        "applied: postgres.pool_size, postgres.client_idle_timeout; needs restart: postgres.listen"
    );
}

#[test]
fn database_keys_compare_entries_by_name() {
    let old = with("");
    let mut new = old.clone();
    new.postgres.databases.reverse();
    assert!(diff(&old, &new).is_empty(), "order alone is no change");
    new.postgres.databases[0].pool_size = Some(2);
    new.postgres.databases.pop();
    let plan = diff(&old, &new);
    // Adding and removing databases applies on reload too.
    assert_eq!(
        plan.applied,
        [
            "postgres.databases.*.name",
            "postgres.databases.*.pool_size"
        ]
    );
    assert!(plan.restart.is_empty());
}

#[test]
fn mongo_section_coming_needs_restart() {
    let old = with("");
    let mut new = old.clone();
    new.mongo = Some(crate::MongoConfig::default());
    let plan = diff(&old, &new);
    assert!(plan.applied.is_empty());
    assert_eq!(plan.restart, ["mongo"]);
    let mut bigger = new.clone();
    if let Some(m) = &mut bigger.mongo {
        m.max_pool_size += 1;
        m.listen.set_port(1);
    }
    let plan = diff(&new, &bigger);
    assert_eq!(plan.applied, ["mongo.max_pool_size"]);
    assert_eq!(plan.restart, ["mongo.listen"]);
}

#[test]
fn mongo_tls_keys_apply_live() {
    let mut old = with("");
    old.mongo = Some(crate::MongoConfig::default());
    let mut new = old.clone();
    if let Some(m) = &mut new.mongo {
        m.tls.mode = crate::ClientTlsMode::Require;
        m.tls.cert_file = Some("/c.pem".into());
        m.tls.key_file = Some("/k.pem".into());
    }
    let plan = diff(&old, &new);
    assert_eq!(
        plan.applied,
        [
            "mongo.tls.mode",
            "mongo.tls.cert_file",
            "mongo.tls.key_file"
        ]
    );
    assert!(plan.restart.is_empty(), "{plan}");
    assert!(
        diff(&with(""), &with("")).is_empty(),
        "no [mongo] section: no mongo.tls changes"
    );
}
