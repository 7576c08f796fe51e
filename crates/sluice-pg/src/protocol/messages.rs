//! Views and rewriters for the extended-query frontend messages whose statement names
//! Sluice maps in transaction mode: Parse (`P`), Bind (`B`), Describe (`D`) and Close (`C`)
//! (§55.7), and readers for the backend bodies the relay looks into (DataRow of its own
//! injected queries, CommandComplete tags). Each view borrows the frame body; each writer
//! emits a whole new frame. Text is bytes in the client's encoding throughout.

use bytes::{BufMut, BytesMut};

use super::frame::{read_cstr, ProtocolError};

/// A Parse message: statement name, and the rest (query text, parameter types) verbatim.
#[derive(Debug, PartialEq, Eq)]
pub struct Parse<'a> {
    /// Statement name ("" for the unnamed statement), in the client's encoding.
    pub name: &'a [u8],
    /// Everything after the name: `query\0`, `i16` count, `i32` type oids.
    pub rest: &'a [u8],
}

impl<'a> Parse<'a> {
    /// Decodes a Parse body.
    pub fn decode(body: &'a [u8]) -> Result<Self, ProtocolError> {
        let (name, rest) = read_cstr(body, "Parse")?;
        // Validate the rest enough that replaying it later cannot surprise the server more
        // than the original did: query text, then a parameter count that fits.
        let (_query, types) = read_cstr(rest, "Parse")?;
        let n = types
            .get(..2)
            .map(|b| i16::from_be_bytes([b[0], b[1]]))
            .ok_or(ProtocolError::Malformed("Parse"))?;
        if n < 0 || types.len() != 2 + 4 * n as usize {
            return Err(ProtocolError::Malformed("Parse"));
        }
        Ok(Self { name, rest })
    }

    /// The query text, in the client's encoding.
    pub fn query(&self) -> &'a [u8] {
        read_cstr(self.rest, "Parse")
            .map(|(q, _)| q)
            .unwrap_or_default()
    }
}

/// Writes a Parse frame for statement `name` with the given rest.
pub fn write_parse(out: &mut BytesMut, name: &[u8], rest: &[u8]) {
    out.put_u8(b'P');
    out.put_i32((4 + name.len() + 1 + rest.len()) as i32);
    out.put_slice(name);
    out.put_u8(0);
    out.put_slice(rest);
}

/// A Bind message: portal, statement, and the rest (formats, values) verbatim.
#[derive(Debug, PartialEq, Eq)]
pub struct Bind<'a> {
    /// Destination portal name.
    pub portal: &'a [u8],
    /// Source statement name.
    pub statement: &'a [u8],
    /// Everything after the statement name.
    pub rest: &'a [u8],
}

impl<'a> Bind<'a> {
    /// Decodes a Bind body (only the two names are checked).
    pub fn decode(body: &'a [u8]) -> Result<Self, ProtocolError> {
        let (portal, rest) = read_cstr(body, "Bind")?;
        let (statement, rest) = read_cstr(rest, "Bind")?;
        Ok(Self {
            portal,
            statement,
            rest,
        })
    }

    /// Writes this Bind with the statement name replaced.
    pub fn write_renamed(&self, out: &mut BytesMut, statement: &[u8]) {
        out.put_u8(b'B');
        out.put_i32((4 + self.portal.len() + 1 + statement.len() + 1 + self.rest.len()) as i32);
        out.put_slice(self.portal);
        out.put_u8(0);
        out.put_slice(statement);
        out.put_u8(0);
        out.put_slice(self.rest);
    }
}

/// Describe or Close: a kind byte (`S` statement, `P` portal) and a name.
#[derive(Debug, PartialEq, Eq)]
pub struct Target<'a> {
    /// `b'S'` or `b'P'`.
    pub kind: u8,
    /// Statement or portal name.
    pub name: &'a [u8],
}

impl<'a> Target<'a> {
    /// Decodes a Describe or Close body.
    pub fn decode(body: &'a [u8]) -> Result<Self, ProtocolError> {
        let (&kind, rest) = body
            .split_first()
            .ok_or(ProtocolError::Malformed("Describe/Close"))?;
        if kind != b'S' && kind != b'P' {
            return Err(ProtocolError::Malformed("Describe/Close"));
        }
        let (name, rest) = read_cstr(rest, "Describe/Close")?;
        if !rest.is_empty() {
            return Err(ProtocolError::Malformed("Describe/Close"));
        }
        Ok(Self { kind, name })
    }
}

/// Writes a Describe (`tag = b'D'`) or Close (`tag = b'C'`) frame.
pub fn write_target(out: &mut BytesMut, tag: u8, kind: u8, name: &[u8]) {
    out.put_u8(tag);
    out.put_i32((4 + 1 + name.len() + 1) as i32);
    out.put_u8(kind);
    out.put_slice(name);
    out.put_u8(0);
}

/// Writes a frame with an empty body (ParseComplete `1`, CloseComplete `3`, ...).
pub fn write_empty(out: &mut BytesMut, tag: u8) {
    out.put_u8(tag);
    out.put_i32(4);
}

/// Writes a CommandComplete frame with `tag_text`.
pub fn write_command_complete(out: &mut BytesMut, tag_text: &str) {
    out.put_u8(b'C');
    out.put_i32((4 + tag_text.len() + 1) as i32);
    out.put_slice(tag_text.as_bytes());
    out.put_u8(0);
}

/// Writes a simple Query frame (`sql` in the connection's client encoding).
pub fn write_query(out: &mut BytesMut, sql: &[u8]) {
    out.put_u8(b'Q');
    out.put_i32((4 + sql.len() + 1) as i32);
    out.put_slice(sql);
    out.put_u8(0);
}

/// Writes Parse, Bind, Execute and Sync running `sql` once, unnamed, with `params` as
/// text values for `$1`, `$2`, ... (results in text).
pub fn write_one_shot(out: &mut BytesMut, sql: &[u8], params: &[&[u8]]) {
    // Parse: no name, the text, no parameter types.
    let mut rest = Vec::with_capacity(sql.len() + 3);
    rest.extend_from_slice(sql);
    rest.extend_from_slice(&[0, 0, 0]);
    write_parse(out, b"", &rest);
    // Bind: no portal, no statement name, no formats (text), the values, no result formats.
    let values: usize = params.iter().map(|p| 4 + p.len()).sum();
    out.put_u8(b'B');
    out.put_i32((4 + 1 + 1 + 2 + 2 + values + 2) as i32);
    out.put_slice(&[0, 0, 0, 0]);
    out.put_i16(params.len() as i16);
    for p in params {
        out.put_i32(p.len() as i32);
        out.put_slice(p);
    }
    out.put_i16(0);
    // Execute the unnamed portal, all rows; then Sync.
    out.put_u8(b'E');
    out.put_i32(4 + 1 + 4);
    out.put_u8(0);
    out.put_i32(0);
    write_empty(out, b'S');
}

/// The text of a simple Query body: bytes in the client's encoding, not necessarily UTF-8.
pub fn query_text(body: &[u8]) -> Result<&[u8], ProtocolError> {
    read_cstr(body, "Query").map(|(q, _)| q)
}

/// The columns of a DataRow body (`None` for SQL NULL), or `None` if it is malformed.
pub fn data_row_columns(body: &[u8]) -> Option<Vec<Option<&[u8]>>> {
    let n = i16::from_be_bytes([*body.first()?, *body.get(1)?]);
    let mut rest = body.get(2..)?;
    let mut columns = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        let len = i32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
        rest = &rest[4..];
        if len < 0 {
            columns.push(None);
            continue;
        }
        let (value, tail) = (rest.get(..len as usize)?, &rest[len as usize..]);
        columns.push(Some(value));
        rest = tail;
    }
    Some(columns)
}

/// The tag text of a CommandComplete body (empty if malformed).
pub fn command_tag(body: &[u8]) -> &[u8] {
    read_cstr(body, "CommandComplete")
        .map(|(t, _)| t)
        .unwrap_or_default()
}

/// The SQLSTATE field (`C`) of an ErrorResponse or NoticeResponse body.
pub fn error_code(body: &[u8]) -> Option<&[u8]> {
    let mut rest = body;
    while let Some((&field, tail)) = rest.split_first() {
        if field == 0 {
            return None;
        }
        let nul = tail.iter().position(|&b| b == 0)?;
        if field == b'C' {
            return Some(&tail[..nul]);
        }
        rest = &tail[nul + 1..];
    }
    None
}

/// A whole ParseComplete frame (for statements Sluice answers itself).
pub const PARSE_COMPLETE: &[u8] = b"1\0\0\0\x04";
/// A whole BindComplete frame.
pub const BIND_COMPLETE: &[u8] = b"2\0\0\0\x04";
/// A whole CloseComplete frame.
pub const CLOSE_COMPLETE: &[u8] = b"3\0\0\0\x04";
/// A whole NoData frame.
pub const NO_DATA: &[u8] = b"n\0\0\0\x04";
/// ParameterDescription with no parameters, then NoData.
pub const NO_PARAMETERS_NO_DATA: &[u8] = b"t\0\0\0\x06\0\0n\0\0\0\x04";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_code_reads_the_sqlstate_field() {
        let body = b"SERROR\0C42P01\0Mno such table\0\0";
        assert_eq!(error_code(body), Some(&b"42P01"[..]));
        assert_eq!(error_code(b"SERROR\0Mx\0\0"), None);
        assert_eq!(error_code(b"C42"), None, "a field without its NUL");
    }

    fn body(frame: &[u8]) -> &[u8] {
        &frame[5..]
    }

    #[test]
    fn parse_round_trip_with_rename() {
        let mut rest = b"select $1\0".to_vec();
        rest.extend_from_slice(&1i16.to_be_bytes());
        rest.extend_from_slice(&23i32.to_be_bytes());
        let mut out = BytesMut::new();
        write_parse(&mut out, b"s0", &rest);
        let p = Parse::decode(body(&out)).unwrap();
        assert_eq!(p.name, b"s0");
        assert_eq!(p.query(), b"select $1");
        let mut renamed = BytesMut::new();
        write_parse(&mut renamed, b"sluice_1", p.rest);
        let q = Parse::decode(body(&renamed)).unwrap();
        assert_eq!((q.name, q.rest), (&b"sluice_1"[..], p.rest));
        assert_eq!(
            i32::from_be_bytes([renamed[1], renamed[2], renamed[3], renamed[4]]) as usize,
            renamed.len() - 1
        );
    }

    #[test]
    fn data_rows() {
        let body = b"\x00\x03\x00\x00\x00\x02ab\xff\xff\xff\xff\x00\x00\x00\x01\xa4";
        let cols = data_row_columns(body).unwrap();
        assert_eq!(cols, [Some(&b"ab"[..]), None, Some(&b"\xa4"[..])]);
        assert!(data_row_columns(&body[..body.len() - 1]).is_none());
        assert!(data_row_columns(b"\x00").is_none());
        assert_eq!(command_tag(b"SELECT 1\0"), b"SELECT 1");
    }

    #[test]
    fn non_utf8_text_and_names_are_bytes() {
        // LATIN9 '€' is 0xa4: not UTF-8, and fine for PostgreSQL.
        let p = Parse::decode(b"n\xe9\0select '\xa4'\0\0\0").unwrap();
        assert_eq!((p.name, p.query()), (&b"n\xe9"[..], &b"select '\xa4'"[..]));
        assert_eq!(query_text(b"select '\xa4'\0").unwrap(), b"select '\xa4'");
        let b = Bind::decode(b"\xff\0\xfe\0\0\0").unwrap();
        assert_eq!((b.portal, b.statement), (&b"\xff"[..], &b"\xfe"[..]));
        assert_eq!(Target::decode(b"S\xa4\0").unwrap().name, b"\xa4");
    }

    #[test]
    fn parse_rejects_bad_type_counts() {
        assert!(Parse::decode(b"s\0q\0\0\x01").is_err());
        assert!(Parse::decode(b"s\0q\0\xff\xff").is_err());
        assert!(Parse::decode(b"s\0q").is_err());
        assert!(Parse::decode(b"s\0q\0\0\0").is_ok());
    }

    #[test]
    fn bind_rename() {
        let b = Bind::decode(b"p\0s0\0\0\0\0\0\0\0").unwrap();
        assert_eq!((b.portal, b.statement), (&b"p"[..], &b"s0"[..]));
        let mut out = BytesMut::new();
        b.write_renamed(&mut out, b"sluice_9");
        let c = Bind::decode(body(&out)).unwrap();
        assert_eq!(
            (c.portal, c.statement, c.rest),
            (&b"p"[..], &b"sluice_9"[..], b.rest)
        );
    }

    #[test]
    fn targets() {
        assert_eq!(
            Target::decode(b"Ss1\0").unwrap(),
            Target {
                kind: b'S',
                name: b"s1"
            }
        );
        assert!(Target::decode(b"Xs1\0").is_err());
        assert!(Target::decode(b"S").is_err());
        let mut out = BytesMut::new();
        write_target(&mut out, b'C', b'S', b"x");
        assert_eq!(&out[..], b"C\0\0\0\x07Sx\0");
    }
}
