//! Not part of the API: the wire codec, for this crate's tests and fuzz targets that play a
//! hostile peer. The bodies of control frames are deliberately not here: a test writes them as
//! JSON, the way a peer in another language would.

pub use crate::frame::{decode, encode, read_frame, write_frame, Frame, FrameType, HEADER_LEN};

/// A control frame body as this crate's strict parser read it (for fuzz targets: the body types
/// themselves stay private).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParsedBody {
    /// `chain` of a hello, accept or reauth.
    pub chain: Option<String>,
    /// `proof` of a hello, accept or reauth.
    pub proof: Option<String>,
    /// `certs` of a reauth (base64url DER, leaf first).
    pub certs: Vec<String>,
    /// `code` of a reject or close.
    pub code: Option<String>,
}

/// Parses `body` as the control body of `ty` exactly as a session does with a peer's frame
/// (`None` for data frames, which have no structure).
pub fn parse_control_body(
    ty: FrameType,
    body: &[u8],
) -> Option<Result<ParsedBody, crate::FrameError>> {
    use crate::frame::{parse_body, Accept, Hello, Reason, Reauth};
    Some(match ty {
        FrameType::Hello => parse_body::<Hello>(body).map(|h| ParsedBody {
            chain: h.chain,
            proof: Some(h.proof),
            ..ParsedBody::default()
        }),
        FrameType::Accept => parse_body::<Accept>(body).map(|a| ParsedBody {
            chain: a.chain,
            proof: Some(a.proof),
            ..ParsedBody::default()
        }),
        FrameType::Reject | FrameType::Close => parse_body::<Reason>(body).map(|r| ParsedBody {
            code: Some(r.code),
            ..ParsedBody::default()
        }),
        FrameType::Reauth => parse_body::<Reauth>(body).map(|r| ParsedBody {
            chain: r.chain,
            proof: Some(r.proof),
            certs: r.certs,
            code: None,
        }),
        FrameType::Data => return None,
    })
}
