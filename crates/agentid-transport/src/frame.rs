//! The session framing: a 4-byte big-endian body length (at most [`MAX_FRAME_BODY`], the header
//! not counted), a 1-byte frame type, then the body. Control frames carry I-JSON bodies, data
//! frames raw bytes. An oversized length fails before anything is allocated; an unknown type
//! fails (and closes the session) before its body is read.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::{Error, FrameError, Result};

/// The largest frame body, in bytes (the 5-byte header not counted).
pub const MAX_FRAME_BODY: usize = 131_072;

/// The frame header: 4 bytes of length, 1 byte of type.
pub const HEADER_LEN: usize = 5;

/// A frame type (spec/PROTOCOL.md pins the codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameType {
    /// Client to server, first frame: chain (optional) and hop proof.
    Hello = 0x01,
    /// Server to client: the server's hop proof (with `rth`) and chain (optional).
    Accept = 0x02,
    /// Server to client: refusal with a code.
    Reject = 0x03,
    /// Either side: renewed certificate, optional new chain, new proof.
    Reauth = 0x04,
    /// Either side: the session ends, with a code.
    Close = 0x05,
    /// Application bytes.
    Data = 0x10,
}

impl FrameType {
    /// The type for a wire byte, if known.
    pub fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            0x01 => Self::Hello,
            0x02 => Self::Accept,
            0x03 => Self::Reject,
            0x04 => Self::Reauth,
            0x05 => Self::Close,
            0x10 => Self::Data,
            _ => return None,
        })
    }

    /// A lowercase name for errors and logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Hello => "hello",
            Self::Accept => "accept",
            Self::Reject => "reject",
            Self::Reauth => "reauth",
            Self::Close => "close",
            Self::Data => "data",
        }
    }
}

/// One frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The type.
    pub ty: FrameType,
    /// The body.
    pub body: Bytes,
}

/// Appends one frame to `dst`.
pub fn encode(ty: FrameType, body: &[u8], dst: &mut BytesMut) -> Result<(), FrameError> {
    let len = u32::try_from(body.len())
        .ok()
        .filter(|l| *l as usize <= MAX_FRAME_BODY)
        .ok_or(FrameError::TooLarge(body.len() as u64))?;
    dst.reserve(HEADER_LEN + body.len());
    dst.put_u32(len);
    dst.put_u8(ty as u8);
    dst.put_slice(body);
    Ok(())
}

fn parse_header(header: [u8; HEADER_LEN]) -> Result<(usize, FrameType), FrameError> {
    let [a, b, c, d, t] = header;
    let len = u32::from_be_bytes([a, b, c, d]);
    if len as usize > MAX_FRAME_BODY {
        return Err(FrameError::TooLarge(u64::from(len)));
    }
    let ty = FrameType::from_u8(t).ok_or(FrameError::UnknownType(t))?;
    Ok((len as usize, ty))
}

/// Takes one complete frame from the front of `src`, if there is one. Errors on an oversized
/// length or an unknown type as soon as the header is there.
pub fn decode(src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
    let Some(header) = src.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let mut h = [0u8; HEADER_LEN];
    h.copy_from_slice(header);
    let (len, ty) = parse_header(h)?;
    if src.len() < HEADER_LEN + len {
        return Ok(None);
    }
    src.advance(HEADER_LEN);
    let body = src.split_to(len).freeze();
    Ok(Some(Frame { ty, body }))
}

/// Reads one frame. `Ok(None)` on a clean end of stream before the first header byte; a stream
/// ending inside a frame is [`FrameError::Truncated`]. Memory is bounded by [`MAX_FRAME_BODY`].
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Frame>> {
    let mut header = [0u8; HEADER_LEN];
    let mut filled = 0;
    while filled < HEADER_LEN {
        let rest = header.get_mut(filled..).unwrap_or_default();
        let n = r.read(rest).await?;
        if n == 0 {
            return if filled == 0 {
                Ok(None)
            } else {
                Err(FrameError::Truncated.into())
            };
        }
        filled += n;
    }
    let (len, ty) = parse_header(header)?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => Error::Frame(FrameError::Truncated),
        _ => Error::Io(e),
    })?;
    Ok(Some(Frame {
        ty,
        body: Bytes::from(body),
    }))
}

/// Writes one frame and flushes.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    ty: FrameType,
    body: &[u8],
) -> Result<()> {
    let mut buf = BytesMut::new();
    encode(ty, body, &mut buf)?;
    w.write_all(&buf).await?;
    w.flush().await?;
    Ok(())
}

/// An optional member that, when present, is a string (`null` is refused, not read as absent).
fn present_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    String::deserialize(d).map(Some)
}

/// The hello body: the client's chain (optional) and hop proof.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Hello {
    /// The delegation chain (`~`-joined), if the client presents one.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present_string"
    )]
    pub(crate) chain: Option<String>,
    /// The client's hop proof.
    pub(crate) proof: String,
}

/// The accept body: the server's hop proof (with `rth`) and chain (optional).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Accept {
    /// The server's hop proof.
    pub(crate) proof: String,
    /// The server's delegation chain, if it has one.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present_string"
    )]
    pub(crate) chain: Option<String>,
}

/// The reject and close bodies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Reason {
    /// A stable code (a protocol error code or a transport reason).
    pub(crate) code: String,
    /// A human-readable message (never contains tokens or keys).
    pub(crate) message: String,
}

/// The most bytes of a peer's reason code kept ([`Reason::into_sanitized`]).
pub(crate) const MAX_PEER_CODE: usize = 64;
/// The most bytes of a peer's reason message kept ([`Reason::into_sanitized`]).
pub(crate) const MAX_PEER_MESSAGE: usize = 512;

impl Reason {
    /// The code and message of a reason the peer sent, fit for an error and a log line: each
    /// cut to [`MAX_PEER_CODE`] and [`MAX_PEER_MESSAGE`] bytes (at a character boundary, `...`
    /// marking the cut), control characters (newlines, terminal escapes) replaced by U+FFFD. A
    /// frame may carry 128 KiB of either, which would otherwise be logged as it is.
    pub(crate) fn into_sanitized(self) -> (String, String) {
        (
            agentid_protocol::clean_text(self.code, MAX_PEER_CODE),
            agentid_protocol::clean_text(self.message, MAX_PEER_MESSAGE),
        )
    }
}

/// The reauth body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Reauth {
    /// The renewed certificate chain, leaf first, each DER certificate in base64url (no padding).
    pub(crate) certs: Vec<String>,
    /// A new delegation chain, if any.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present_string"
    )]
    pub(crate) chain: Option<String>,
    /// A hop proof bound to this connection, made with the (unchanged) key.
    pub(crate) proof: String,
}

/// Parses a control frame body in two steps: first as I-JSON ([`agentid_protocol::ijson`]: UTF-8,
/// one object, no duplicate member names at any depth, nesting at most 8, nothing after it), then
/// into the strict struct (exactly the expected members, each of the expected type).
pub(crate) fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    // The errors may quote the peer's text (serde names an unknown member): kept clean.
    let bad = |e: &dyn std::fmt::Display| {
        FrameError::BadBody(agentid_protocol::clean_text(
            e.to_string(),
            MAX_PEER_MESSAGE,
        ))
    };
    let object = agentid_protocol::ijson::parse_object(body).map_err(|e| bad(&e))?;
    serde_json::from_value(serde_json::Value::Object(object)).map_err(|e| bad(&e))
}

/// `s` as a JSON string literal (quoted, escaped as `serde_json` escapes it).
pub(crate) fn json_string(s: &str) -> String {
    // A compact JWS (base64url and dots) needs no escaping: copied as is.
    if s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'))
    {
        let mut out = String::with_capacity(s.len() + 2);
        out.push('"');
        out.push_str(s);
        out.push('"');
        return out;
    }
    // Serializing a `str` cannot fail; the fallback is never taken.
    serde_json::to_string(s).unwrap_or_default()
}

/// The body of a hello (`chain` first) or an accept (`proof` first), the bytes `serde_json`
/// writes for [`Hello`] and [`Accept`], with the chain given as its JSON string literal
/// ([`json_string`], kept by the credential): the ~10 KB chain is copied, not escaped again on
/// every connection.
pub(crate) fn presentation_body(ty: FrameType, proof: &str, chain_json: Option<&str>) -> Vec<u8> {
    let proof = json_string(proof);
    let mut out = Vec::with_capacity(24 + proof.len() + chain_json.map_or(0, str::len));
    let chain = |out: &mut Vec<u8>, c: &str| {
        out.extend_from_slice(b"\"chain\":");
        out.extend_from_slice(c.as_bytes());
    };
    out.push(b'{');
    if ty == FrameType::Hello {
        if let Some(c) = chain_json {
            chain(&mut out, c);
            out.push(b',');
        }
    }
    out.extend_from_slice(b"\"proof\":");
    out.extend_from_slice(proof.as_bytes());
    if ty != FrameType::Hello {
        if let Some(c) = chain_json {
            out.push(b',');
            chain(&mut out, c);
        }
    }
    out.push(b'}');
    out
}

/// Serializes a control frame body.
pub fn body_bytes<T: Serialize>(body: &T) -> Result<Vec<u8>, FrameError> {
    serde_json::to_vec(body).map_err(|e| FrameError::BadBody(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A control body's member names are the peer's text: serde names an unknown one in its
    /// error, which reaches the `handshake failed` log line as it is.
    #[test]
    fn an_unknown_members_name_reaches_the_error_bounded_and_without_control_characters() {
        let name = format!("x\n2026-12-06 INFO forged\u{1b}[2J{}", "y".repeat(50_000));
        let mut body = serde_json::Map::new();
        body.insert("proof".into(), "p".into());
        body.insert(name, "v".into());
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        match parse_body::<Hello>(&bytes) {
            Err(e) => {
                let shown = Error::Frame(e).to_string();
                assert!(shown.len() <= 600, "{} bytes", shown.len());
                assert!(!shown.chars().any(char::is_control), "{shown:?}");
            }
            Ok(h) => panic!("{h:?}"),
        }
    }

    #[test]
    fn presentation_bodies_are_what_serde_json_writes() {
        let chains = [
            None,
            Some("a.b.c~d.e.f"),
            Some(""),
            Some("quote \" backslash \\ control \u{1} \u{1f} del \u{7f} é \u{2028}"),
        ];
        let proofs = ["h.p.s", "", "\"\\\n", "aZ09-_.~", "a b", "é"];
        for chain in chains {
            for proof in proofs {
                let json = chain.map(json_string);
                let hello = Hello {
                    chain: chain.map(str::to_owned),
                    proof: proof.to_owned(),
                };
                assert_eq!(
                    presentation_body(FrameType::Hello, proof, json.as_deref()),
                    body_bytes(&hello).unwrap()
                );
                let accept = Accept {
                    proof: proof.to_owned(),
                    chain: chain.map(str::to_owned),
                };
                let body = presentation_body(FrameType::Accept, proof, json.as_deref());
                assert_eq!(body, body_bytes(&accept).unwrap());
                assert_eq!(parse_body::<Accept>(&body).unwrap(), accept);
            }
        }
    }

    #[test]
    fn round_trip_and_partial_input() {
        let mut buf = BytesMut::new();
        encode(FrameType::Data, b"hello", &mut buf).unwrap();
        encode(FrameType::Close, b"{}", &mut buf).unwrap();
        assert_eq!(&buf[..5], &[0, 0, 0, 5, 0x10]);
        let mut partial = BytesMut::from(&buf[..7]);
        assert_eq!(decode(&mut partial).unwrap(), None);
        let f = decode(&mut buf).unwrap().unwrap();
        assert_eq!((f.ty, &f.body[..]), (FrameType::Data, &b"hello"[..]));
        assert_eq!(decode(&mut buf).unwrap().unwrap().ty, FrameType::Close);
        assert!(buf.is_empty());
    }

    #[test]
    fn limits_and_unknown_types() {
        // Exactly the cap is fine; one more byte is refused on the header alone.
        let mut at_cap = BytesMut::from(&(MAX_FRAME_BODY as u32).to_be_bytes()[..]);
        at_cap.extend_from_slice(&[0x10]);
        assert_eq!(decode(&mut at_cap).unwrap(), None);
        let mut over = BytesMut::from(&((MAX_FRAME_BODY as u32) + 1).to_be_bytes()[..]);
        over.extend_from_slice(&[0x10]);
        assert_eq!(
            decode(&mut over),
            Err(FrameError::TooLarge(MAX_FRAME_BODY as u64 + 1))
        );
        let mut huge = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 0x10][..]);
        assert!(matches!(decode(&mut huge), Err(FrameError::TooLarge(_))));
        let mut unknown = BytesMut::from(&[0, 0, 0, 0, 0x06][..]);
        assert_eq!(decode(&mut unknown), Err(FrameError::UnknownType(0x06)));
        let mut out = BytesMut::new();
        assert!(encode(FrameType::Data, &vec![0u8; MAX_FRAME_BODY + 1], &mut out).is_err());
    }

    #[test]
    fn control_bodies_are_strict() {
        let ok: Hello = parse_body(br#"{"proof":"p"}"#).unwrap();
        assert_eq!(ok.chain, None);
        let ok: Hello = parse_body(br#"{"chain":"c","proof":"p"}"#).unwrap();
        assert_eq!(ok.chain.as_deref(), Some("c"));
        // Refused by the I-JSON step (the message carries the protocol's `bad_json` code).
        for bad in [
            &br#"{"proof":"p","proof":"q"}"#[..],
            br#"{"proof":"p","\u0070roof":"q"}"#,
            br#"{"proof":"p","x":{"a":1,"a":2}}"#,
            br#"{"proof":"p","x":[{"a":1,"a":2}]}"#,
            br#"{"proof":"p","x":[[[[[[[[[1]]]]]]]]]}"#,
            br#"{"proof":"p"} trailing"#,
            br#"{"proof":"p"}{}"#,
            br#"["proof"]"#,
            br#""proof""#,
            b"\xff",
            b"",
        ] {
            match parse_body::<Hello>(bad) {
                Err(FrameError::BadBody(m)) => {
                    assert!(
                        m.starts_with("bad_json"),
                        "{:?}: {m}",
                        String::from_utf8_lossy(bad)
                    );
                }
                other => panic!("{:?}: {other:?}", String::from_utf8_lossy(bad)),
            }
        }
        // Well-formed I-JSON, refused by the strict struct: members and types.
        for bad in [
            &br#"{"proof":"p","extra":1}"#[..],
            br#"{"chain":"c"}"#,
            br#"{"proof":1}"#,
            br#"{"proof":"p","chain":null}"#,
            br#"{"proof":"p","chain":["c"]}"#,
            br#"{}"#,
        ] {
            match parse_body::<Hello>(bad) {
                Err(FrameError::BadBody(m)) => assert!(!m.starts_with("bad_json"), "{m}"),
                other => panic!("{:?}: {other:?}", String::from_utf8_lossy(bad)),
            }
        }
        assert!(parse_body::<Reauth>(br#"{"certs":"x","proof":"p"}"#).is_err());
        assert!(parse_body::<Reauth>(br#"{"certs":["x",1],"proof":"p"}"#).is_err());
        assert!(parse_body::<Reason>(br#"{"code":"normal"}"#).is_err());
    }

    #[tokio::test]
    async fn truncated_stream() {
        let mut r: &[u8] = &[0, 0, 0, 4, 0x10, 1, 2];
        assert!(matches!(
            read_frame(&mut r).await,
            Err(Error::Frame(FrameError::Truncated))
        ));
        let mut r: &[u8] = &[0, 0];
        assert!(matches!(
            read_frame(&mut r).await,
            Err(Error::Frame(FrameError::Truncated))
        ));
        let mut r: &[u8] = &[];
        assert!(read_frame(&mut r).await.unwrap().is_none());
    }
}
