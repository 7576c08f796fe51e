//! LISTEN/UNLISTEN sent with the extended protocol (asyncpg's `add_listener` does):
//! in transaction mode the statement never reaches a server; its Parse, Bind, Describe,
//! Execute and Close are answered in place, and the Execute takes effect as a simple
//! `LISTEN` does (see [`super::Synthetic::Listen`]).

use super::sql::{classify, Statement as Sql};
use super::{Effect, Exchange, Expect, Synthetic};
use crate::protocol::messages::{
    Bind, Parse, Target, BIND_COMPLETE, CLOSE_COMPLETE, NO_DATA, NO_PARAMETERS_NO_DATA,
    PARSE_COMPLETE,
};

impl Exchange {
    /// A Parse of `LISTEN x` / `UNLISTEN x` (transaction mode): answered in place and
    /// remembered, so its Bind, Describe, Execute and Close are answered too. True when
    /// handled. Any other Parse forgets a LISTEN statement of the same name.
    pub(super) fn listen_parse(&mut self, p: &Parse<'_>) -> bool {
        if !self.features.listen_in_place {
            return false;
        }
        let effect = match classify(p.query()) {
            Sql::Listen(c) => Effect::Listen(c),
            Sql::Unlisten(c) => Effect::Unlisten(c),
            _ => {
                if let Some(names) = &mut self.listen_names {
                    names.statements.remove(p.name);
                }
                return false;
            }
        };
        let names = self.listen_names.get_or_insert_with(Default::default);
        names.statements.insert(p.name.to_vec(), effect);
        self.push(Expect::Synthetic(Synthetic::Frames(PARSE_COMPLETE)));
        true
    }

    /// Bind of a LISTEN statement: answered in place, the portal remembered.
    pub(super) fn listen_bind(&mut self, b: &Bind<'_>) -> bool {
        let Some(names) = &mut self.listen_names else {
            return false;
        };
        let Some(effect) = names.statements.get(b.statement).cloned() else {
            names.portals.remove(b.portal);
            return false;
        };
        names.portals.insert(b.portal.to_vec(), effect);
        self.push(Expect::Synthetic(Synthetic::Frames(BIND_COMPLETE)));
        true
    }

    /// Describe or Close of a LISTEN statement or portal: answered in place.
    pub(super) fn listen_target(&mut self, t: &Target<'_>, close: bool) -> bool {
        let Some(names) = &mut self.listen_names else {
            return false;
        };
        let names = match t.kind {
            b'S' => &mut names.statements,
            _ => &mut names.portals,
        };
        if !names.contains_key(t.name) {
            return false;
        }
        let answer = match (close, t.kind) {
            (true, _) => {
                names.remove(t.name);
                CLOSE_COMPLETE
            }
            (false, b'S') => NO_PARAMETERS_NO_DATA,
            (false, _) => NO_DATA,
        };
        self.push(Expect::Synthetic(Synthetic::Frames(answer)));
        true
    }
}
