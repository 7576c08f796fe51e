//! Sans-IO tests of the exchange: client and server bytes in, bytes out, no sockets.

use bytes::{BufMut, BytesMut};
use postgres_protocol::message::frontend;

use super::*;
use crate::protocol::frame::{read_cstr, Frames, MAX_FRAME_LEN};

/// Decoded frames: (tag, body).
type Out = Vec<(u8, Vec<u8>)>;

struct Fixture {
    ex: Exchange,
    client: ClientState,
    server: ServerState,
    registry: StatementRegistry,
}

fn features(cache_size: u32) -> Features {
    Features {
        map_statements: true,
        track_settings: true,
        cache_size,
        listen_in_place: true,
    }
}

impl Fixture {
    fn new(cache_size: u32) -> Self {
        Self {
            ex: Exchange::new(features(cache_size)),
            client: ClientState::default(),
            server: ServerState::default(),
            registry: StatementRegistry::default(),
        }
    }

    /// Feeds client bytes; returns (frames to server, frames to client).
    fn client(&mut self, bytes: &[u8]) -> (Out, Out) {
        let (mut to_server, mut to_client) = (BytesMut::new(), BytesMut::new());
        let mut io = Sides {
            client: &mut self.client,
            server: &mut self.server,
            registry: &self.registry,
            to_server: &mut to_server,
            to_client: &mut to_client,
        };
        self.ex.on_client(bytes, &mut io).unwrap();
        (frames(&to_server), frames(&to_client))
    }

    /// Feeds server bytes; returns frames to the client (and checks Sluice injected none).
    fn server(&mut self, bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let (to_client, injected) = self.server_injecting(bytes);
        assert!(injected.is_empty());
        to_client
    }

    /// Feeds server bytes; returns (frames to the client, frames Sluice injected).
    fn server_injecting(&mut self, bytes: &[u8]) -> (Out, Out) {
        let (mut to_server, mut to_client) = (BytesMut::new(), BytesMut::new());
        let mut io = Sides {
            client: &mut self.client,
            server: &mut self.server,
            registry: &self.registry,
            to_server: &mut to_server,
            to_client: &mut to_client,
        };
        let n = self.ex.on_server(bytes, &mut io).unwrap();
        assert_eq!(n, bytes.len());
        (frames(&to_client), frames(&to_server))
    }

    /// A new server connection for the next transaction.
    fn switch_server(&mut self) {
        self.server = ServerState::default();
        self.ex.on_checkout();
    }
}

fn frames(buf: &[u8]) -> Vec<(u8, Vec<u8>)> {
    Frames::new(buf, MAX_FRAME_LEN)
        .map(|f| (f.tag, f.body.to_vec()))
        .collect()
}

fn tags(f: &[(u8, Vec<u8>)]) -> String {
    f.iter().map(|(t, _)| char::from(*t)).collect()
}

fn parse(name: &str, sql: &str) -> BytesMut {
    let mut b = BytesMut::new();
    frontend::parse(name, sql, std::iter::empty(), &mut b).unwrap();
    b
}

fn bind_execute_sync(stmt: &str) -> BytesMut {
    let mut b = BytesMut::new();
    frontend::bind(
        "",
        stmt,
        std::iter::empty::<i16>(),
        std::iter::empty::<i32>(),
        |_: i32,
         _: &mut BytesMut|
         -> Result<postgres_protocol::IsNull, Box<dyn std::error::Error + Send + Sync>> {
            Ok(postgres_protocol::IsNull::No)
        },
        std::iter::empty::<i16>(),
        &mut b,
    )
    .map_err(|_| ())
    .unwrap();
    frontend::execute("", 0, &mut b).unwrap();
    frontend::sync(&mut b);
    b
}

fn sync() -> BytesMut {
    let mut b = BytesMut::new();
    frontend::sync(&mut b);
    b
}

fn query(sql: &str) -> BytesMut {
    let mut b = BytesMut::new();
    frontend::query(sql, &mut b).unwrap();
    b
}

fn be(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn ready(status: u8) -> Vec<u8> {
    be(b'Z', &[status])
}

fn complete(tag: &str) -> Vec<u8> {
    be(b'C', format!("{tag}\0").as_bytes())
}

fn data_row(value: &str) -> Vec<u8> {
    let mut body = BytesMut::new();
    body.put_i16(1);
    body.put_i32(value.len() as i32);
    body.put_slice(value.as_bytes());
    be(b'D', &body)
}

fn error() -> Vec<u8> {
    be(b'E', b"SERROR\0C42P01\0Mboom\0\0")
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn stmt_name(frame: &(u8, Vec<u8>)) -> String {
    let body = &frame.1;
    let (first, rest) = read_cstr(body, "t").unwrap();
    if frame.0 == b'B' {
        String::from_utf8_lossy(read_cstr(rest, "t").unwrap().0).into_owned()
    } else {
        String::from_utf8_lossy(first).into_owned()
    }
}

#[test]
fn named_parse_is_renamed_and_bind_follows() {
    let mut f = Fixture::new(10);
    let (to_server, to_client) = f.client(&cat(&[&parse("s0", "select 1"), &sync()]));
    assert_eq!(tags(&to_server), "PS");
    assert_eq!(stmt_name(&to_server[0]), "sluice_1");
    assert!(to_client.is_empty());
    let out = f.server(&cat(&[&be(b'1', b""), &ready(b'I')]));
    assert_eq!(tags(&out), "1Z");
    assert!(f.ex.idle());

    let (to_server, _) = f.client(&bind_execute_sync("s0"));
    assert_eq!(tags(&to_server), "BES");
    assert_eq!(stmt_name(&to_server[0]), "sluice_1");
}

#[test]
fn statement_is_prepared_again_on_a_new_server_invisibly() {
    let mut f = Fixture::new(10);
    f.client(&cat(&[&parse("s0", "select 1"), &sync()]));
    f.server(&cat(&[&be(b'1', b""), &ready(b'I')]));
    f.switch_server();

    let (to_server, _) = f.client(&bind_execute_sync("s0"));
    assert_eq!(tags(&to_server), "PBES");
    assert_eq!(stmt_name(&to_server[0]), "sluice_1");
    let out = f.server(&cat(&[
        &be(b'1', b""),
        &be(b'2', b""),
        &data_row("1"),
        &complete("SELECT 1"),
        &ready(b'I'),
    ]));
    assert_eq!(
        tags(&out),
        "2DCZ",
        "the injected ParseComplete is swallowed"
    );
    assert!(f.ex.idle());
}

#[test]
fn identical_statements_share_one_server_statement() {
    let mut f = Fixture::new(10);
    f.client(&cat(&[&parse("a", "select 1"), &sync()]));
    f.server(&cat(&[&be(b'1', b""), &ready(b'I')]));
    // Another name for the same text: no Parse reaches the server, the client still
    // gets its ParseComplete in order.
    let (to_server, to_client) = f.client(&cat(&[&parse("b", "select 1"), &sync()]));
    assert_eq!(tags(&to_server), "S");
    assert_eq!(tags(&to_client), "1");
    assert_eq!(tags(&f.server(&ready(b'I'))), "Z");
    assert_eq!(f.registry.len(), 1);
}

#[test]
fn synthetic_parse_complete_waits_for_earlier_responses() {
    let mut f = Fixture::new(10);
    f.client(&cat(&[&parse("a", "select 1"), &sync()]));
    f.server(&cat(&[&be(b'1', b""), &ready(b'I')]));
    let (to_server, to_client) = f.client(&cat(&[
        &bind_execute_sync("a"),
        &parse("b", "select 1"),
        &sync(),
    ]));
    assert_eq!(tags(&to_server), "BESS");
    assert!(
        to_client.is_empty(),
        "ParseComplete must not overtake the Bind's results"
    );
    let out = f.server(&cat(&[
        &be(b'2', b""),
        &complete("SELECT 1"),
        &ready(b'I'),
        &ready(b'I'),
    ]));
    assert_eq!(tags(&out), "2CZ1Z");
}

#[test]
fn failed_replay_reports_the_error_and_forgets_the_server_copy() {
    let mut f = Fixture::new(10);
    f.client(&cat(&[&parse("s0", "select * from t"), &sync()]));
    f.server(&cat(&[&be(b'1', b""), &ready(b'I')]));
    f.switch_server();
    let (to_server, _) = f.client(&bind_execute_sync("s0"));
    assert_eq!(tags(&to_server), "PBES");
    let out = f.server(&cat(&[&error(), &ready(b'I')]));
    assert_eq!(tags(&out), "EZ");
    assert!(f.ex.idle());
    assert!(f.server.statements.is_empty());
    assert!(
        f.client.statements.contains_key(&b"s0"[..]),
        "the client's name survives"
    );
    // Next time it is prepared again.
    let (to_server, _) = f.client(&bind_execute_sync("s0"));
    assert_eq!(tags(&to_server), "PBES");
}

#[test]
fn parse_error_forgets_the_client_statement() {
    let mut f = Fixture::new(10);
    f.client(&cat(&[&parse("bad", "selec 1"), &bind_execute_sync("bad")]));
    let out = f.server(&cat(&[&error(), &ready(b'I')]));
    assert_eq!(tags(&out), "EZ");
    assert!(!f.client.statements.contains_key(&b"bad"[..]));
    assert!(f.server.statements.is_empty());
}

#[test]
fn error_before_a_synthetic_parse_complete_drops_it() {
    let mut f = Fixture::new(10);
    f.client(&cat(&[&parse("a", "select 1"), &sync()]));
    f.server(&cat(&[&be(b'1', b""), &ready(b'I')]));
    // Execute fails, so the server would have skipped the following Parse too.
    let (_, to_client) = f.client(&cat(&[
        &parse("", "select boom"),
        &parse("b", "select 1"),
        &sync(),
    ]));
    assert!(to_client.is_empty());
    let out = f.server(&cat(&[&error(), &ready(b'I')]));
    assert_eq!(tags(&out), "EZ");
    assert!(!f.client.statements.contains_key(&b"b"[..]));
    assert!(f.client.statements.contains_key(&b"a"[..]));
}

#[test]
fn duplicate_statement_name_is_an_error_like_postgres() {
    let mut f = Fixture::new(10);
    f.client(&cat(&[&parse("a", "select 1"), &sync()]));
    f.server(&cat(&[&be(b'1', b""), &ready(b'I')]));
    let (to_server, to_client) =
        f.client(&cat(&[&parse("a", "select 2"), &bind_execute_sync("a")]));
    assert_eq!(tags(&to_server), "S", "the rest of the batch is dropped");
    assert_eq!(tags(&to_client), "E");
    assert_eq!(tags(&f.server(&ready(b'I'))), "Z");
}

#[test]
fn close_only_forgets_the_client_name() {
    let mut f = Fixture::new(10);
    f.client(&cat(&[&parse("a", "select 1"), &sync()]));
    f.server(&cat(&[&be(b'1', b""), &ready(b'I')]));
    let mut close = BytesMut::new();
    frontend::close(b'S', "a", &mut close).unwrap();
    let (to_server, to_client) = f.client(&cat(&[&close, &sync()]));
    assert_eq!(tags(&to_server), "S");
    assert_eq!(tags(&to_client), "3");
    assert!(f.client.statements.is_empty());
    assert_eq!(
        f.server.statements.len(),
        1,
        "still cached for other clients"
    );
}

#[test]
fn cache_evicts_with_close_and_swallows_close_complete() {
    let mut f = Fixture::new(1);
    f.client(&cat(&[&parse("a", "select 1"), &sync()]));
    f.server(&cat(&[&be(b'1', b""), &ready(b'I')]));
    let (to_server, _) = f.client(&cat(&[&parse("b", "select 2"), &sync()]));
    assert_eq!(tags(&to_server), "CPS");
    let out = f.server(&cat(&[&be(b'3', b""), &be(b'1', b""), &ready(b'I')]));
    assert_eq!(tags(&out), "1Z");
    assert_eq!(f.server.statements.len(), 1);
}

#[test]
fn copy_from_stdin_in_extended_protocol_ignores_the_first_sync() {
    let mut f = Fixture::new(10);
    let mut b = parse("", "copy t from stdin");
    b.extend_from_slice(&bind_execute_sync(""));
    f.client(&b);
    f.server(&cat(&[
        &be(b'1', b""),
        &be(b'2', b""),
        &be(b'G', b"\0\0\0"),
    ]));
    let mut data = BytesMut::new();
    frontend::copy_done(&mut data);
    frontend::sync(&mut data);
    f.client(&cat(&[&be(b'd', b"1\n"), &data]));
    let out = f.server(&cat(&[&complete("COPY 1"), &ready(b'I')]));
    assert_eq!(tags(&out), "CZ");
    assert!(f.ex.idle(), "one ReadyForQuery answers both Syncs");
}

#[test]
fn settings_follow_the_client_to_the_next_server() {
    let mut f = Fixture::new(10);
    let (to_server, _) = f.client(&query("SET search_path TO a, b"));
    assert_eq!(
        tags(&to_server),
        "QQ",
        "the SET and a current_setting capture"
    );
    let out = f.server(&cat(&[
        &complete("SET"),
        &ready(b'I'),
        &be(
            b'T',
            b"\0\x01x\0\0\0\0\0\0\0\0\0\0\x19\xff\xff\xff\xff\xff\xff\0\0",
        ),
        &data_row("a, b"),
        &complete("SELECT 1"),
        &ready(b'I'),
    ]));
    assert_eq!(tags(&out), "CZ", "the capture is invisible");
    assert_eq!(f.client.setting("search_path"), Some(&b"a, b"[..]));
    assert!(!f.ex.needs_reset());

    f.switch_server();
    let (to_server, _) = f.client(&query("select 1"));
    assert_eq!(tags(&to_server), "QQ");
    let sync_sql = String::from_utf8_lossy(messages::query_text(&to_server[0].1).unwrap());
    assert!(
        sync_sql.contains("set_config('search_path', $s$a, b$s$, false)"),
        "{sync_sql}"
    );
    let out = f.server(&cat(&[
        &data_row("a, b"),
        &complete("SELECT 1"),
        &ready(b'I'),
        &complete("SELECT 1"),
        &ready(b'I'),
    ]));
    assert_eq!(tags(&out), "CZ");
}

#[test]
fn set_inside_a_rolled_back_transaction_is_forgotten() {
    let mut f = Fixture::new(10);
    f.client(&query("BEGIN"));
    f.server(&cat(&[&complete("BEGIN"), &ready(b'T')]));
    f.client(&query("SET work_mem = '9MB'"));
    f.server(&cat(&[
        &complete("SET"),
        &ready(b'T'),
        &data_row("9MB"),
        &complete("SELECT 1"),
        &ready(b'T'),
    ]));
    f.client(&query("ROLLBACK"));
    f.server(&cat(&[&complete("ROLLBACK"), &ready(b'I')]));
    assert_eq!(f.client.setting("work_mem"), None);
    assert!(f.ex.idle());
}

#[test]
fn untracked_state_asks_for_a_reset() {
    let mut f = Fixture::new(10);
    f.client(&query("CREATE TEMP TABLE x(a int)"));
    f.server(&cat(&[&complete("CREATE TABLE"), &ready(b'I')]));
    assert!(f.ex.needs_reset());

    let mut f = Fixture::new(10);
    f.client(&query("select pg_advisory_lock(1)"));
    f.server(&cat(&[&complete("SELECT 1"), &ready(b'I')]));
    assert!(f.ex.needs_reset());
}

/// Answers the read-back query with `rows` (name, value).
fn read_back_answer(rows: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = be(
        b'T',
        b"\0\x02name\0\0\0\0\0\0\0\0\0\0\x19\xff\xff\xff\xff\xff\xff\0\0\
          v\0\0\0\0\0\0\0\0\0\0\x19\xff\xff\xff\xff\xff\xff\0\0",
    );
    for (name, value) in rows {
        let mut body = BytesMut::new();
        body.put_i16(2);
        body.put_i32(name.len() as i32);
        body.put_slice(name.as_bytes());
        body.put_i32(value.len() as i32);
        body.put_slice(value);
        out.extend(be(b'D', &body));
    }
    out.extend(complete(&format!("SELECT {}", rows.len())));
    out.extend(ready(b'I'));
    out
}

#[test]
fn settings_changed_invisibly_are_read_back_and_follow_the_client() {
    for sql in [
        "select set_config('work_mem', '9MB', false)",
        "SET work_mem = '9MB'; SELECT 1",
        "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
    ] {
        let mut f = Fixture::new(10);
        f.client(&query(sql));
        // The client's own answer is forwarded; Sluice then reads the settings back
        // before the server may go.
        let (out, injected) = f.server_injecting(&cat(&[&complete("SET"), &ready(b'I')]));
        assert_eq!(tags(&out), "CZ", "{sql}");
        assert_eq!(tags(&injected), "Q", "{sql}");
        assert_eq!(
            messages::query_text(&injected[0].1).unwrap(),
            crate::state::READ_BACK_SQL
        );
        assert!(!f.ex.idle(), "{sql}: not released before the read-back");
        let out = f.server(&read_back_answer(&[
            ("work_mem", b"9MB"),
            ("DateStyle", b"ISO, DMY"),
        ]));
        assert!(out.is_empty(), "{sql}: the read-back is invisible");
        assert!(f.ex.idle() && !f.ex.needs_reset(), "{sql}");
        assert_eq!(f.client.setting("work_mem"), Some(&b"9MB"[..]));
        assert_eq!(f.client.setting("datestyle"), Some(&b"ISO, DMY"[..]));

        f.switch_server();
        let (to_server, _) = f.client(&query("select 1"));
        assert_eq!(
            tags(&to_server),
            "QQ",
            "{sql}: re-applied on the next server"
        );
        let sync_sql = messages::query_text(&to_server[0].1).unwrap();
        let sync_sql = String::from_utf8_lossy(sync_sql);
        assert!(
            sync_sql.contains("set_config('work_mem', $s$9MB$s$, false)"),
            "{sync_sql}"
        );
        assert!(sync_sql.contains("set_config('datestyle', $s$ISO, DMY$s$, false)"));
    }
}

#[test]
fn read_back_waits_for_the_end_of_the_transaction() {
    let mut f = Fixture::new(10);
    f.client(&query("BEGIN"));
    f.server(&cat(&[&complete("BEGIN"), &ready(b'T')]));
    f.client(&query("select set_config('work_mem', '9MB', false)"));
    let (_, injected) = f.server_injecting(&cat(&[&complete("SELECT 1"), &ready(b'T')]));
    assert!(
        injected.is_empty(),
        "nothing is read inside the transaction"
    );
    f.client(&query("ROLLBACK"));
    let (_, injected) = f.server_injecting(&cat(&[&complete("ROLLBACK"), &ready(b'I')]));
    assert_eq!(tags(&injected), "Q");
    f.server(&read_back_answer(&[]));
    assert_eq!(f.client.setting("work_mem"), None, "rolled back");
    assert!(f.ex.idle());
}

#[test]
fn non_utf8_queries_pass_and_set_client_encoding_reads_everything_back() {
    let mut f = Fixture::new(10);
    let mut q = BytesMut::new();
    q.put_u8(b'Q');
    let sql = b"select '\xa4'\0";
    q.put_i32(4 + sql.len() as i32);
    q.put_slice(sql);
    let (to_server, _) = f.client(&q);
    assert_eq!(to_server[0].1, sql);
    f.server(&cat(&[&complete("SELECT 1"), &ready(b'I')]));
    assert!(f.ex.idle());

    f.client(&query("SET client_encoding = 'LATIN9'"));
    let (_, injected) = f.server_injecting(&cat(&[
        &complete("SET"),
        &be(b'S', b"client_encoding\0LATIN9\0"),
        &ready(b'I'),
        &data_row("LATIN9"),
        &complete("SELECT 1"),
        &ready(b'I'),
    ]));
    assert_eq!(tags(&injected), "Q");
    f.server(&read_back_answer(&[
        ("client_encoding", b"LATIN9"),
        ("application_name", b"caf\xe9"),
    ]));
    assert_eq!(f.client.setting("application_name"), Some(&b"caf\xe9"[..]));
    f.switch_server();
    let (to_server, _) = f.client(&query("select 1"));
    assert_eq!(tags(&to_server), "QQQ", "encoding first, alone");
    assert!(String::from_utf8_lossy(&to_server[0].1).contains("'client_encoding', $s$LATIN9$s$"));
    assert!(to_server[1].1.windows(4).any(|w| w == b"caf\xe9"));
}

#[test]
fn deallocate_and_listen_are_answered_by_sluice() {
    let mut f = Fixture::new(10);
    f.client(&cat(&[&parse("a", "select 1"), &sync()]));
    f.server(&cat(&[&be(b'1', b""), &ready(b'I')]));
    let (to_server, to_client) = f.client(&query("DEALLOCATE a"));
    assert!(to_server.is_empty());
    assert_eq!(tags(&to_client), "CZ");
    assert!(f.client.statements.is_empty());
    let (to_server, to_client) = f.client(&query("LISTEN chan"));
    assert!(to_server.is_empty());
    assert_eq!(tags(&to_client), "CZ");
    assert!(f.client.listening.contains(b"chan".as_slice()));
    assert!(f.ex.idle());
    let (_, to_client) = f.client(&query("LISTEN a; LISTEN b"));
    assert_eq!(tags(&to_client), "EZ");
    let (_, to_client) = f.client(&query("UNLISTEN *"));
    assert_eq!(tags(&to_client), "CZ");
    assert!(f.client.listening.is_empty());
}

#[test]
fn listen_in_a_transaction_counts_only_if_it_commits() {
    let mut f = Fixture::new(10);
    for (end, kept) in [("ROLLBACK", false), ("COMMIT", true)] {
        f.client(&query("BEGIN"));
        f.server(&cat(&[&be(b'C', b"BEGIN\0"), &ready(b'T')]));
        let (to_server, to_client) = f.client(&query("LISTEN chan"));
        assert!(to_server.is_empty());
        assert_eq!(tags(&to_client), "CZ");
        assert!(f.client.listening.is_empty(), "not before the block ends");
        f.client(&query(end));
        let tag = format!("{end}\0");
        f.server(&cat(&[&be(b'C', tag.as_bytes()), &ready(b'I')]));
        assert_eq!(
            f.client.listening.contains(b"chan".as_slice()),
            kept,
            "{end}"
        );
    }
    // In a failed block, PostgreSQL refuses every command but the block's end.
    f.client(&query("BEGIN"));
    f.server(&cat(&[&be(b'C', b"BEGIN\0"), &ready(b'T')]));
    f.client(&query("select 1/0"));
    f.server(&cat(&[
        &be(b'E', b"SERROR\0C22012\0Mdivision by zero\0\0"),
        &ready(b'E'),
    ]));
    let (_, to_client) = f.client(&query("UNLISTEN chan"));
    assert_eq!(tags(&to_client), "EZ");
    f.client(&query("ROLLBACK"));
    f.server(&cat(&[&be(b'C', b"ROLLBACK\0"), &ready(b'I')]));
    assert!(f.client.listening.contains(b"chan".as_slice()));
}

#[test]
fn stale_shared_statement_is_replaced_after_0a000() {
    let mut f = Fixture::new(10);
    f.client(&cat(&[&parse("a", "select * from t"), &sync()]));
    f.server(&cat(&[&be(b'1', b""), &ready(b'I')]));
    let (to_server, _) = f.client(&bind_execute_sync("a"));
    assert_eq!(tags(&to_server), "BES");
    let stale = be(
        b'E',
        b"SERROR\0C0A000\0Mcached plan must not change result type\0\0",
    );
    assert_eq!(tags(&f.server(&cat(&[&stale, &ready(b'I')]))), "EZ");
    // A new Parse of the same text gets a fresh server-side statement.
    let (to_server, to_client) = f.client(&cat(&[&parse("b", "select * from t"), &sync()]));
    assert_eq!(tags(&to_server), "PS");
    assert!(to_client.is_empty());
    assert_eq!(stmt_name(&to_server[0]), "sluice_2");
}
