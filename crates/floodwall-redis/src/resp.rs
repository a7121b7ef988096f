//! RESP2, the Redis wire protocol: encoding commands and decoding replies.
//!
//! Sans-IO: [`encode`] appends a command to a buffer, [`decode`] reads one
//! reply from the front of a buffer if it is complete. The connection driver
//! in [`client`](crate::client) is the only thing that touches a socket.

use std::fmt;

/// The deepest nesting of arrays accepted in a reply. The limiter's replies
/// are flat; the bound keeps a hostile or broken peer from recursing the
/// decoder into a stack overflow.
const MAX_DEPTH: usize = 8;

/// The most elements (or bytes, for a bulk string) one reply may declare.
/// Larger declarations are a protocol error rather than an allocation.
const MAX_LEN: i64 = 512 * 1024 * 1024;

/// One Redis reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `+OK`: a status line.
    Status(String),
    /// `-ERR …`: an error reply (the whole line after the `-`).
    Error(String),
    /// `:42`: an integer.
    Int(i64),
    /// `$…`: a bulk string; `None` for the null bulk string `$-1`.
    Bulk(Option<Vec<u8>>),
    /// `*…`: an array; `None` for the null array `*-1`.
    Array(Option<Vec<Value>>),
}

impl Value {
    /// The error reply's first word (`NOSCRIPT`, `MOVED`, `ERR`), if this is
    /// an error reply.
    pub fn error_code(&self) -> Option<&str> {
        match self {
            Value::Error(line) => Some(line.split(' ').next().unwrap_or("")),
            _ => None,
        }
    }
}

/// The peer sent bytes that are not a RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(&'static str);

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid RESP reply: {}", self.0)
    }
}

impl std::error::Error for ProtocolError {}

/// Appends `args` as one RESP2 command (an array of bulk strings) to `buf`.
pub fn encode(buf: &mut Vec<u8>, args: &[&[u8]]) {
    buf.push(b'*');
    push_decimal(buf, args.len() as u64);
    buf.extend_from_slice(b"\r\n");
    for arg in args {
        buf.push(b'$');
        push_decimal(buf, arg.len() as u64);
        buf.extend_from_slice(b"\r\n");
        buf.extend_from_slice(arg);
        buf.extend_from_slice(b"\r\n");
    }
}

fn push_decimal(buf: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[i..]);
}

/// Decodes one reply from the front of `buf`.
///
/// Returns the reply and how many bytes it took, `Ok(None)` if `buf` holds
/// only part of a reply (read more and call again), or an error if the
/// bytes can never be a valid reply.
///
/// # Errors
/// [`ProtocolError`] for an unknown type byte, a malformed length or
/// integer, a missing `\r\n`, nesting deeper than 8 arrays or a declared
/// length over 512 MiB.
pub fn decode(buf: &[u8]) -> Result<Option<(Value, usize)>, ProtocolError> {
    let mut pos = 0;
    match decode_at(buf, &mut pos, 0)? {
        Some(value) => Ok(Some((value, pos))),
        None => Ok(None),
    }
}

fn decode_at(buf: &[u8], pos: &mut usize, depth: usize) -> Result<Option<Value>, ProtocolError> {
    let Some(&kind) = buf.get(*pos) else {
        return Ok(None);
    };
    let Some(line) = line_at(buf, *pos + 1)? else {
        return Ok(None);
    };
    let after_line = *pos + 1 + line.len() + 2;
    let value = match kind {
        b'+' => Value::Status(text(line)?),
        b'-' => Value::Error(text(line)?),
        b':' => Value::Int(integer(line)?),
        b'$' => {
            let len = length(line)?;
            if len < 0 {
                *pos = after_line;
                return Ok(Some(Value::Bulk(None)));
            }
            let len = len as usize;
            let end = after_line + len;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(ProtocolError("bulk string not followed by CRLF"));
            }
            *pos = end + 2;
            return Ok(Some(Value::Bulk(Some(buf[after_line..end].to_vec()))));
        }
        b'*' => {
            let len = length(line)?;
            if len < 0 {
                *pos = after_line;
                return Ok(Some(Value::Array(None)));
            }
            if depth >= MAX_DEPTH {
                return Err(ProtocolError("arrays nested too deeply"));
            }
            let mut cursor = after_line;
            // Cap the up-front allocation: the length is the peer's claim.
            let mut items = Vec::with_capacity((len as usize).min(64));
            for _ in 0..len {
                match decode_at(buf, &mut cursor, depth + 1)? {
                    Some(item) => items.push(item),
                    None => return Ok(None),
                }
            }
            *pos = cursor;
            return Ok(Some(Value::Array(Some(items))));
        }
        _ => return Err(ProtocolError("unknown reply type")),
    };
    *pos = after_line;
    Ok(Some(value))
}

/// The bytes from `start` up to the next CRLF, if the buffer holds it.
fn line_at(buf: &[u8], start: usize) -> Result<Option<&[u8]>, ProtocolError> {
    let Some(rest) = buf.get(start..) else {
        return Ok(None);
    };
    match rest.iter().position(|&b| b == b'\r') {
        Some(i) if i + 1 < rest.len() => {
            if rest[i + 1] != b'\n' {
                return Err(ProtocolError("CR not followed by LF"));
            }
            Ok(Some(&rest[..i]))
        }
        _ => Ok(None),
    }
}

fn text(line: &[u8]) -> Result<String, ProtocolError> {
    String::from_utf8(line.to_vec()).map_err(|_| ProtocolError("status or error line is not UTF-8"))
}

fn integer(line: &[u8]) -> Result<i64, ProtocolError> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or(ProtocolError("malformed integer"))
}

fn length(line: &[u8]) -> Result<i64, ProtocolError> {
    let len = integer(line)?;
    if !(-1..=MAX_LEN).contains(&len) {
        return Err(ProtocolError("length out of range"));
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn one(bytes: &[u8]) -> Value {
        let (value, used) = decode(bytes).unwrap().expect("complete");
        assert_eq!(used, bytes.len(), "consumed the whole reply");
        value
    }

    #[test]
    fn encodes_a_command_as_an_array_of_bulk_strings() {
        let mut buf = Vec::new();
        encode(&mut buf, &[b"EVALSHA", b"abc", b"1", b""]);
        assert_eq!(
            buf,
            b"*4\r\n$7\r\nEVALSHA\r\n$3\r\nabc\r\n$1\r\n1\r\n$0\r\n\r\n".to_vec()
        );
    }

    #[test]
    fn decodes_every_reply_type() {
        assert_eq!(one(b"+OK\r\n"), Value::Status("OK".into()));
        assert_eq!(
            one(b"-NOSCRIPT No matching script\r\n"),
            Value::Error("NOSCRIPT No matching script".into())
        );
        assert_eq!(one(b":-42\r\n"), Value::Int(-42));
        assert_eq!(
            one(b"$5\r\nhe\r\no\r\n"),
            Value::Bulk(Some(b"he\r\no".to_vec()))
        );
        assert_eq!(one(b"$-1\r\n"), Value::Bulk(None));
        assert_eq!(one(b"*-1\r\n"), Value::Array(None));
        assert_eq!(
            one(b"*3\r\n:1\r\n*1\r\n$0\r\n\r\n+x\r\n"),
            Value::Array(Some(vec![
                Value::Int(1),
                Value::Array(Some(vec![Value::Bulk(Some(Vec::new()))])),
                Value::Status("x".into()),
            ]))
        );
    }

    #[test]
    fn error_code_is_the_first_word() {
        let moved = one(b"-MOVED 3999 127.0.0.1:6381\r\n");
        assert_eq!(moved.error_code(), Some("MOVED"));
        assert_eq!(Value::Int(1).error_code(), None);
    }

    #[test]
    fn every_strict_prefix_is_incomplete_and_the_rest_stays_for_next_time() {
        let reply = b"*2\r\n$3\r\nabc\r\n:7\r\n";
        for cut in 0..reply.len() {
            assert_eq!(decode(&reply[..cut]), Ok(None), "prefix of {cut} bytes");
        }
        let mut two = reply.to_vec();
        two.extend_from_slice(b"+OK\r\n");
        let (_, used) = decode(&two).unwrap().unwrap();
        assert_eq!(used, reply.len());
        assert_eq!(one(&two[used..]), Value::Status("OK".into()));
    }

    #[test]
    fn rejects_garbage_instead_of_guessing() {
        assert!(decode(b"?what\r\n").is_err());
        assert!(decode(b":12a\r\n").is_err());
        assert!(decode(b"$3\r\nabcXY").is_err());
        assert!(decode(b"+OK\rX").is_err());
        assert!(decode(b"$-2\r\n").is_err());
        assert!(decode(b"*99999999999\r\n").is_err());
        let deep = b"*1\r\n".repeat(MAX_DEPTH + 1);
        assert!(decode(&deep).is_err());
    }

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            "[a-zA-Z0-9 ]{0,12}".prop_map(Value::Status),
            "[A-Z]{1,8} [a-z ]{0,12}".prop_map(Value::Error),
            any::<i64>().prop_map(Value::Int),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..24))
                .prop_map(Value::Bulk),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            proptest::option::of(proptest::collection::vec(inner, 0..4)).prop_map(Value::Array)
        })
    }

    fn write(value: &Value, out: &mut Vec<u8>) {
        match value {
            Value::Status(s) => out.extend_from_slice(format!("+{s}\r\n").as_bytes()),
            Value::Error(s) => out.extend_from_slice(format!("-{s}\r\n").as_bytes()),
            Value::Int(n) => out.extend_from_slice(format!(":{n}\r\n").as_bytes()),
            Value::Bulk(None) => out.extend_from_slice(b"$-1\r\n"),
            Value::Bulk(Some(b)) => {
                out.extend_from_slice(format!("${}\r\n", b.len()).as_bytes());
                out.extend_from_slice(b);
                out.extend_from_slice(b"\r\n");
            }
            Value::Array(None) => out.extend_from_slice(b"*-1\r\n"),
            Value::Array(Some(items)) => {
                out.extend_from_slice(format!("*{}\r\n", items.len()).as_bytes());
                for item in items {
                    write(item, out);
                }
            }
        }
    }

    proptest! {
        #[test]
        fn decoding_inverts_writing_for_any_reply(v in value()) {
            let mut bytes = Vec::new();
            write(&v, &mut bytes);
            let (decoded, used) = decode(&bytes).unwrap().unwrap();
            prop_assert_eq!(decoded, v);
            prop_assert_eq!(used, bytes.len());
            for cut in 0..bytes.len() {
                prop_assert_eq!(decode(&bytes[..cut]), Ok(None));
            }
        }

        #[test]
        fn encoding_any_arguments_decodes_back_as_bulk_strings(
            args in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..32), 1..6)
        ) {
            let slices: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
            let mut buf = Vec::new();
            encode(&mut buf, &slices);
            let expected = Value::Array(Some(args.iter().cloned().map(|a| Value::Bulk(Some(a))).collect()));
            prop_assert_eq!(decode(&buf).unwrap().unwrap().0, expected);
        }
    }
}
