//! How each key's old and new values are compared: by entry name for lists of tables
//! (databases, users, user settings), and only when both sides have a `[mongo]` section.

use crate::model::{DatabaseConfig, MongoConfig, UserConfig, UserSettings};
use crate::Config;

/// The sorted names of a list of entries.
pub(super) fn names<T>(items: &[T], name: impl Fn(&T) -> &String) -> Vec<&String> {
    let mut names: Vec<_> = items.iter().map(name).collect();
    names.sort();
    names
}

/// Whether a database present in both differs in the compared field.
pub(super) fn databases_differ(
    a: &Config,
    b: &Config,
    differ: impl Fn(&DatabaseConfig, &DatabaseConfig) -> bool,
) -> bool {
    a.postgres
        .databases
        .iter()
        .any(|x| b.postgres.database(&x.name).is_some_and(|y| differ(x, y)))
}

/// Whether a `[[postgres.user_settings]]` entry present in both differs in the field.
pub(super) fn user_settings_differ(
    a: &Config,
    b: &Config,
    differ: impl Fn(&UserSettings, &UserSettings) -> bool,
) -> bool {
    a.postgres.user_settings.iter().any(|x| {
        b.postgres
            .user_settings(&x.name)
            .is_some_and(|y| differ(x, y))
    })
}

/// Whether both have a `[mongo]` section and they differ in the compared field.
pub(super) fn mongo_differs(
    a: &Config,
    b: &Config,
    differ: impl Fn(&MongoConfig, &MongoConfig) -> bool,
) -> bool {
    match (&a.mongo, &b.mongo) {
        (Some(x), Some(y)) => differ(x, y),
        _ => false,
    }
}

/// Whether the set of user names (or, with `passwords`, a password of a user in both)
/// differs.
pub(super) fn users_differ(a: &[UserConfig], b: &[UserConfig], passwords: bool) -> bool {
    if passwords {
        a.iter().any(|x| {
            b.iter()
                .any(|y| y.name == x.name && y.password != x.password)
        })
    } else {
        names(a, |u| &u.name) != names(b, |u| &u.name)
    }
}
