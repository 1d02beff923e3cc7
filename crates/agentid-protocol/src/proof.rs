//! Hop proofs (`agentid-proof+jwt`): a per-connection signed statement binding a presentation
//! to one TLS 1.3 connection through the exporter, and leaving both sides a signed receipt.

use crate::chain::MAX_CHAIN_BYTES;
use crate::crypto::{sha256, token_hash, verify, verify_and_hash, TaskKey};
use std::borrow::Cow;
use std::collections::BTreeSet;

use serde::de::MapAccess;

use crate::encoding::{
    b64_check, b64_decode_in, b64_decoded_len, b64_encode, write_json_str, write_json_u64,
    StrictValue,
};
use crate::error::{Error, ErrorCode, Result};
use crate::id::{PeerId, SpiffeId};
use crate::jws::{self, parse_header, sign_compact_written, TokenType};
use crate::token::claims::{hash_value, known_and_present, string_claim, time_claim};
use crate::token::members::{read_object, Object, StrOr, StrOrSeed};
use crate::verifier::{not_expired, not_issued_in_future};
use crate::PublicKey;

/// The TLS 1.3 exporter label of the channel binding.
pub const EXPORTER_LABEL: &[u8] = b"EXPERIMENTAL-agentid-proof-v1";

/// Length of the exporter value in bytes.
pub const EXPORTER_LEN: usize = 32;

/// Maximum proof lifetime (`exp - iat`), in seconds.
pub const MAX_PROOF_LIFETIME: u64 = 60;

/// The presenter's role in the TLS connection; it selects the exporter context.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// The TLS client (exporter context `client`).
    Client,
    /// The TLS server (exporter context `server`).
    Server,
}

impl Role {
    /// The exporter context: the ASCII bytes `client` or `server`.
    pub const fn exporter_context(self) -> &'static [u8] {
        match self {
            Role::Client => b"client",
            Role::Server => b"server",
        }
    }
}

/// The claims of a hop proof (spec/PROTOCOL.md section 12).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Claim {
    Sub,
    Aud,
    Iat,
    Exp,
    Jti,
    Cb,
    Cth,
    Rth,
}

impl Claim {
    /// Every claim, in the order of the table (the index of its slot).
    const ALL: [Self; 8] = [
        Self::Sub,
        Self::Aud,
        Self::Iat,
        Self::Exp,
        Self::Jti,
        Self::Cb,
        Self::Cth,
        Self::Rth,
    ];

    const fn as_str(self) -> &'static str {
        match self {
            Self::Sub => "sub",
            Self::Aud => "aud",
            Self::Iat => "iat",
            Self::Exp => "exp",
            Self::Jti => "jti",
            Self::Cb => "cb",
            Self::Cth => "cth",
            Self::Rth => "rth",
        }
    }
}

const PROOF_CLAIMS_CLIENT: &[Claim] = &[
    Claim::Sub,
    Claim::Aud,
    Claim::Iat,
    Claim::Exp,
    Claim::Jti,
    Claim::Cb,
    Claim::Cth,
];
const PROOF_CLAIMS_SERVER: &[Claim] = &Claim::ALL;
const PROOF_REQUIRED: &[Claim] = &[
    Claim::Sub,
    Claim::Aud,
    Claim::Iat,
    Claim::Exp,
    Claim::Jti,
    Claim::Cb,
];
const PROOF_REQUIRED_SERVER: &[Claim] = &[
    Claim::Sub,
    Claim::Aud,
    Claim::Iat,
    Claim::Exp,
    Claim::Jti,
    Claim::Cb,
    Claim::Rth,
];

/// A proof's payload read in one pass ([`read_object`]): each claim as its check reads it, and
/// the names of the other members.
#[derive(Debug, Default)]
struct ProofMembers<'a> {
    slots: [Option<StrOr<'a>>; Claim::ALL.len()],
    others: BTreeSet<String>,
}

impl ProofMembers<'_> {
    fn get(&self, claim: Claim) -> Option<&StrOr<'_>> {
        self.slots.get(claim as usize).and_then(Option::as_ref)
    }

    fn string(&self, claim: Claim) -> Result<&str> {
        string_claim(claim.as_str(), self.get(claim).map(StrOr::as_str))
    }

    fn time(&self, claim: Claim) -> Result<u64> {
        time_claim(claim.as_str(), self.get(claim).map(StrOr::as_u64))
    }

    fn hash(&self, claim: Claim) -> Result<[u8; 32]> {
        hash_value(claim.as_str(), self.string(claim)?)
    }
}

impl<'de> Object<'de> for ProofMembers<'de> {
    type Name = Claim;
    const NAMES: &'static [Claim] = &Claim::ALL;

    fn name(s: &str) -> Option<Claim> {
        Claim::ALL.into_iter().find(|c| c.as_str() == s)
    }

    fn spelling(claim: Claim) -> &'static str {
        claim.as_str()
    }

    fn has(&self, claim: Claim) -> bool {
        self.get(claim).is_some()
    }

    fn read<A: MapAccess<'de>>(
        &mut self,
        claim: Claim,
        map: &mut A,
        held_at: StrictValue,
    ) -> core::result::Result<(), A::Error> {
        let value = map.next_value_seed(StrOrSeed { held_at })?;
        if let Some(slot) = self.slots.get_mut(claim as usize) {
            *slot = Some(value);
        }
        Ok(())
    }

    fn others(&self) -> &BTreeSet<String> {
        &self.others
    }

    fn others_mut(&mut self) -> &mut BTreeSet<String> {
        &mut self.others
    }
}

/// The claims of a proof after step P4: each of the right type, `sub` and `aud` SPIFFE IDs of
/// peers (kept as whether they name the presenter and the verifier), `jti` base64url of at
/// least 16 bytes, the hashes of 32 bytes.
#[derive(Debug, PartialEq, Eq)]
struct ProofClaims {
    sub_is_presenter: bool,
    aud_is_verifier: bool,
    iat: u64,
    exp: u64,
    jti: String,
    cb: [u8; 32],
    cth: Option<[u8; 32]>,
    rth: Option<[u8; 32]>,
}

/// Step P4: the payload as an I-JSON object (`bad_json`), its members (`unknown_claim`, then
/// `missing_claim`), then each claim in order.
fn decode_claims(payload: &[u8], ctx: &ProofContext<'_>) -> Result<ProofClaims> {
    let m: ProofMembers<'_> = read_object(payload)?;
    let (allowed, required) = match ctx.role {
        Role::Client => (PROOF_CLAIMS_CLIENT, PROOF_REQUIRED),
        Role::Server => (PROOF_CLAIMS_SERVER, PROOF_REQUIRED_SERVER),
    };
    known_and_present(&m, allowed, required)?;
    // `sub` and `aud` name TLS peers: task identities or service IDs.
    // Each is what `PeerId::parse` gives; the string of the expected peer is not parsed again.
    let sub_is_presenter = PeerId::parse_names(m.string(Claim::Sub)?, ctx.presenter_id)?;
    let aud_is_verifier = PeerId::parse_names(m.string(Claim::Aud)?, ctx.verifier_id)?;
    let iat = m.time(Claim::Iat)?;
    let exp = m.time(Claim::Exp)?;
    let jti = m.string(Claim::Jti)?;
    check_proof_jti(jti)?;
    let cb = m.hash(Claim::Cb)?;
    let cth = m.has(Claim::Cth).then(|| m.hash(Claim::Cth)).transpose()?;
    let rth = m.has(Claim::Rth).then(|| m.hash(Claim::Rth)).transpose()?;
    Ok(ProofClaims {
        sub_is_presenter,
        aud_is_verifier,
        iat,
        exp,
        jti: jti.to_owned(),
        cb,
        cth,
        rth,
    })
}

/// A proof's `jti`: base64url of at least 16 bytes, at most 256 characters (`bad_claim`).
/// Checked without decoding: [`b64_decode`] accepts exactly what [`b64_check`] accepts, and
/// gives [`b64_decoded_len`] bytes.
fn check_proof_jti(jti: &str) -> Result<()> {
    let decoded = b64_check(jti)
        .ok()
        .and_then(|()| b64_decoded_len(jti.len()));
    match decoded {
        Some(n) if n >= 16 && jti.len() <= 256 => Ok(()),
        _ => Err(Error::new(
            ErrorCode::BadClaim,
            "`jti` must be base64url of at least 16 bytes",
        )),
    }
}

/// Builds and signs a hop proof with the presenter's certificate key.
#[derive(Debug)]
#[must_use]
pub struct ProofBuilder<'a> {
    /// The presenter's ID, borrowed: written into the payload once, at [`ProofBuilder::sign`].
    sub: &'a SpiffeId,
    /// The peer's ID, borrowed likewise.
    aud: &'a SpiffeId,
    role: Role,
    exporter: [u8; EXPORTER_LEN],
    iat: u64,
    exp: u64,
    /// `cth`: the [`token_hash`] of the chain sent with the proof (borrowed when the
    /// presenter gives a hash it keeps, [`ProofBuilder::chain_hash`]).
    cth: Option<Cow<'a, str>>,
    /// `rth`: the [`token_hash`] of the client proof a server proof answers.
    rth: Option<String>,
}

impl<'a> ProofBuilder<'a> {
    /// A proof by `presenter` (its certificate's URI SAN) to `peer` (the peer's URI SAN), for a
    /// connection whose exporter value for `role` is `exporter`, valid over `[iat, exp)`.
    pub fn new(
        presenter: &'a SpiffeId,
        peer: &'a SpiffeId,
        role: Role,
        exporter: [u8; EXPORTER_LEN],
        iat: u64,
        exp: u64,
    ) -> Self {
        Self {
            sub: presenter,
            aud: peer,
            role,
            exporter,
            iat,
            exp,
            cth: None,
            rth: None,
        }
    }

    /// Binds the chain sent with this proof (`cth`).
    pub fn chain(mut self, chain: &str) -> Self {
        self.cth = Some(Cow::Owned(token_hash(chain)));
        self
    }

    /// Binds the chain sent with this proof (`cth`) by its [`token_hash`]: for a presenter that
    /// sends the same chain on every connection and hashes it once. A hash of another chain
    /// gives a proof that every verifier refuses (`chain_hash_mismatch`).
    pub fn chain_hash(mut self, chain_hash: &'a str) -> Self {
        self.cth = Some(Cow::Borrowed(chain_hash));
        self
    }

    /// For the server's proof: binds the client proof it answers (`rth`).
    pub fn responding_to(mut self, client_proof: &str) -> Self {
        self.rth = Some(token_hash(client_proof));
        self
    }

    /// [`ProofBuilder::responding_to`] the client proof `client` verified: the same `rth`, its
    /// hash taken when the proof's signature was verified where that cost no second pass.
    pub fn answering(mut self, client: &VerifiedProof) -> Self {
        self.rth = Some(match client.hash {
            Some(h) => b64_encode(&h),
            None => token_hash(&client.compact),
        });
        self
    }

    /// Signs with the presenter's certificate key.
    pub fn sign(self, key: &TaskKey) -> Result<String> {
        if self.iat >= self.exp || self.exp - self.iat > MAX_PROOF_LIFETIME {
            return Err(Error::new(
                ErrorCode::LifetimeExceeded,
                "a proof must satisfy iat < exp <= iat + 60",
            ));
        }
        let rth = match (self.role, self.rth) {
            (Role::Server, Some(r)) => Some(r),
            (Role::Server, None) => {
                return Err(Error::new(
                    ErrorCode::MissingClaim,
                    "a server proof must answer a client proof",
                ))
            }
            (Role::Client, Some(_)) => {
                return Err(Error::new(
                    ErrorCode::UnknownClaim,
                    "only a server proof carries `rth`",
                ))
            }
            (Role::Client, None) => None,
        };
        let jti = b64_encode(&crate::crypto::random_bytes::<16>()?);
        let cb = b64_encode(&self.exporter);
        // Written member by member, names in byte order (the order serde_json's default map
        // writes): an I-JSON object by construction, so it is not parsed back. Strings that
        // are not base64url are written with serde_json's escaping, straight into the payload.
        let mut payload = Vec::with_capacity(
            96 + self.sub.as_str().len()
                + self.aud.as_str().len()
                + self.cth.as_deref().map_or(0, str::len)
                + rth.as_ref().map_or(0, String::len),
        );
        payload.extend_from_slice(br#"{"aud":"#);
        write_json_str(&mut payload, self.aud.as_str())?;
        payload.extend_from_slice(br#","cb":""#);
        payload.extend_from_slice(cb.as_bytes());
        payload.push(b'"');
        if let Some(c) = self.cth.as_deref() {
            payload.extend_from_slice(br#","cth":"#);
            write_json_str(&mut payload, c)?;
        }
        payload.extend_from_slice(br#","exp":"#);
        write_json_u64(&mut payload, self.exp)?;
        payload.extend_from_slice(br#","iat":"#);
        write_json_u64(&mut payload, self.iat)?;
        payload.extend_from_slice(br#","jti":""#);
        payload.extend_from_slice(jti.as_bytes());
        payload.push(b'"');
        if let Some(r) = &rth {
            payload.extend_from_slice(br#","rth":"#);
            write_json_str(&mut payload, r)?;
        }
        payload.extend_from_slice(br#","sub":"#);
        write_json_str(&mut payload, self.sub.as_str())?;
        payload.push(b'}');
        sign_compact_written(TokenType::Proof, key.algorithm(), None, &payload, |input| {
            key.sign(input)
        })
    }
}

/// What a proof verifier knows about the connection: nothing here comes from the proof itself.
#[derive(Clone, Copy, Debug)]
pub struct ProofContext<'a> {
    /// The presenter's certificate URI SAN (from the verified TLS peer certificate).
    pub presenter_id: &'a SpiffeId,
    /// The presenter's certificate public key.
    pub presenter_key: &'a PublicKey,
    /// The verifier's own URI SAN.
    pub verifier_id: &'a SpiffeId,
    /// The presenter's role in the TLS connection.
    pub role: Role,
    /// The verifier's own exporter value for the presenter's role.
    pub exporter: [u8; EXPORTER_LEN],
    /// Current time, Unix seconds.
    pub now: u64,
    /// Allowed clock skew in seconds (at most 120).
    pub skew: u64,
    /// The chain sent with the proof, if any.
    pub chain: Option<&'a str>,
    /// For a server proof: the client proof it must answer.
    pub client_proof: Option<&'a str>,
}

/// A verified hop proof: the session's signed receipt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedProof {
    /// The proof's `jti`.
    pub jti: String,
    /// Issued-at.
    pub iat: u64,
    /// Expiry.
    pub exp: u64,
    /// The compact proof, as received (kept as the receipt).
    pub compact: String,
    /// The SHA-256 of `compact`, for a client proof whose signature check gave it in the same
    /// pass (ES256); [`ProofBuilder::answering`] reads it.
    hash: Option<[u8; 32]>,
}

/// Verifies a hop proof: rules P0 to P10 of spec/PROTOCOL.md section 12, in order (the
/// replay check of a later proof on the same connection is
/// [`crate::Verifier::verify_presentation`]'s).
pub fn verify_proof(proof: &str, ctx: &ProofContext<'_>) -> Result<VerifiedProof> {
    verify_proof_with(proof, ctx, |chain, _| sha256(chain.as_bytes()))
}

/// [`verify_proof`], with `chain_hash` giving the SHA-256 of the chain sent (rule P9), told
/// the `cth` claimed: a verifier with a cache of verified tokens remembers the hashes of chains
/// it verified, and finds one by the hash claimed.
pub(crate) fn verify_proof_with(
    proof: &str,
    ctx: &ProofContext<'_>,
    chain_hash: impl FnOnce(&str, &[u8; 32]) -> [u8; 32],
) -> Result<VerifiedProof> {
    // P0. Input.
    if ctx.skew > crate::config::MAX_SKEW {
        return Err(Error::new(ErrorCode::BadConfig, "skew above 120 seconds"));
    }
    crate::verifier::valid_now(ctx.now)?;
    // P1. Framing.
    let raw = jws::split(proof)?;
    // The signature (64 bytes) and a payload of usual size are decoded onto the stack.
    let (mut signature_buf, mut signature_heap) = ([0u8; 64], Vec::new());
    let signature = b64_decode_in(raw.signature_b64, &mut signature_buf, &mut signature_heap)?;
    let (mut payload_buf, mut payload_heap) = ([0u8; 512], Vec::new());
    let payload = b64_decode_in(raw.payload_b64, &mut payload_buf, &mut payload_heap)?;
    // P2. Header.
    let header = parse_header(&raw, TokenType::Proof)?;
    // P3, P4. Signature with the presenter's certificate key, then claims. A client proof's
    // hash is what the server's answer binds (`rth`): taken in the same pass where it is free.
    let signed = raw.signing_input();
    let hash = match ctx.role {
        Role::Client => verify_and_hash(
            ctx.presenter_key,
            header.alg,
            proof.as_bytes(),
            signed.len(),
            signature,
        )?,
        Role::Server => {
            verify(ctx.presenter_key, header.alg, signed, signature)?;
            None
        }
    };
    let ProofClaims {
        sub_is_presenter,
        aud_is_verifier,
        iat,
        exp,
        jti,
        cb,
        cth,
        rth,
    } = decode_claims(payload, ctx)?;
    // P5. Time (before the identities and bindings, as spec/PROTOCOL.md section 12 orders it).
    if iat >= exp {
        return Err(Error::new(
            ErrorCode::BadValidity,
            "proof `iat` must be before `exp`",
        ));
    }
    if exp - iat > MAX_PROOF_LIFETIME {
        return Err(Error::new(
            ErrorCode::LifetimeExceeded,
            "a proof lives at most 60 seconds",
        ));
    }
    // The same two checks as rules 5.3 and 5.5 of a chain token.
    not_issued_in_future(iat, ctx.now, ctx.skew)?;
    not_expired(exp, ctx.now, ctx.skew)?;
    // P6, P7. Identities.
    if !sub_is_presenter {
        return Err(Error::new(
            ErrorCode::HolderMismatch,
            "proof `sub` is not the peer's URI SAN",
        ));
    }
    if !aud_is_verifier {
        return Err(Error::new(
            ErrorCode::AudienceMismatch,
            "proof `aud` is not this verifier",
        ));
    }
    // P8. Channel binding.
    if !constant_time_eq(&cb, &ctx.exporter) {
        return Err(Error::new(
            ErrorCode::ChannelBindingMismatch,
            "proof is bound to another connection or role",
        ));
    }
    // P9. Chain hash: present exactly when a chain is sent.
    match (cth, ctx.chain) {
        (None, None) => {}
        (Some(h), Some(chain)) if chain.len() <= MAX_CHAIN_BYTES && h == chain_hash(chain, &h) => {}
        _ => {
            return Err(Error::new(
                ErrorCode::ChainHashMismatch,
                "`cth` does not match the chain sent",
            ))
        }
    }
    // P10. Response hash (server proofs answer one client proof).
    if ctx.role == Role::Server {
        let expected = ctx
            .client_proof
            .map(|p| sha256(p.as_bytes()))
            .ok_or_else(|| {
                Error::new(
                    ErrorCode::BadConfig,
                    "verifying a server proof needs the client proof",
                )
            })?;
        match rth {
            Some(h) if h == expected => {}
            Some(_) => {
                return Err(Error::new(
                    ErrorCode::ResponseHashMismatch,
                    "`rth` does not match the client proof",
                ))
            }
            None => return Err(Error::new(ErrorCode::MissingClaim, "missing claim `rth`")),
        }
    }
    Ok(VerifiedProof {
        jti,
        iat,
        exp,
        compact: proof.to_owned(),
        hash,
    })
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::encoding::{b64_decode, parse_ijson_object};
    use crate::token::claims::{check_members, get_hash, get_str, get_time};
    use crate::{Algorithm, TaskKey};

    /// What the tests verify proofs with: `a`'s proof (its key `key`) to `b` in `role`, over
    /// the exporter `[7; 32]` at time 20 without skew, no chain and no client proof.
    fn test_ctx<'a>(
        a: &'a SpiffeId,
        key: &'a PublicKey,
        b: &'a SpiffeId,
        role: Role,
    ) -> ProofContext<'a> {
        ProofContext {
            presenter_id: a,
            presenter_key: key,
            verifier_id: b,
            role,
            exporter: [7; 32],
            now: 20,
            skew: 0,
            chain: None,
            client_proof: None,
        }
    }

    /// Step P4 as it was written on a JSON tree of the payload, kept unchanged as the oracle
    /// of the differential test below.
    fn decode_claims_tree(payload: &[u8], ctx: &ProofContext<'_>) -> Result<ProofClaims> {
        const CLIENT: &[&str] = &["sub", "aud", "iat", "exp", "jti", "cb", "cth"];
        const SERVER: &[&str] = &["sub", "aud", "iat", "exp", "jti", "cb", "cth", "rth"];
        const REQUIRED: &[&str] = &["sub", "aud", "iat", "exp", "jti", "cb"];
        const REQUIRED_SERVER: &[&str] = &["sub", "aud", "iat", "exp", "jti", "cb", "rth"];
        let map = parse_ijson_object(payload)?;
        let allowed = match ctx.role {
            Role::Client => CLIENT,
            Role::Server => SERVER,
        };
        let required = match ctx.role {
            Role::Client => REQUIRED,
            Role::Server => REQUIRED_SERVER,
        };
        check_members(&map, allowed, required)?;
        let sub = PeerId::parse(get_str(&map, "sub")?)?;
        let aud = PeerId::parse(get_str(&map, "aud")?)?;
        let iat = get_time(&map, "iat")?;
        let exp = get_time(&map, "exp")?;
        let jti = get_str(&map, "jti")?;
        match b64_decode(jti) {
            Ok(b) if b.len() >= 16 && jti.len() <= 256 => {}
            _ => {
                return Err(Error::new(
                    ErrorCode::BadClaim,
                    "`jti` must be base64url of at least 16 bytes",
                ))
            }
        }
        let cb = get_hash(&map, "cb")?;
        let cth = if map.contains_key("cth") {
            Some(get_hash(&map, "cth")?)
        } else {
            None
        };
        let rth = if map.contains_key("rth") {
            Some(get_hash(&map, "rth")?)
        } else {
            None
        };
        Ok(ProofClaims {
            sub_is_presenter: sub.as_spiffe_id() == ctx.presenter_id,
            aud_is_verifier: aud.as_spiffe_id() == ctx.verifier_id,
            iat,
            exp,
            jti: jti.to_owned(),
            cb,
            cth,
            rth,
        })
    }

    const CLAIM_NAMES: &[&str] = &[
        "sub",
        "aud",
        "iat",
        "exp",
        "jti",
        "cb",
        "cth",
        "rth",
        r"s\u0075b",
        r"\u0063b",
        "ver",
        "",
        "a",
        "zz",
        "Sub",
        r"\u0000",
        r"\ud800",
        "\u{e9}",
        "cb ",
    ];

    const CLAIM_VALUES: &[&str] = &[
        r#""spiffe://example.org/agent/a/task/t1""#,
        r#""spiffe://example.org/svc/s""#,
        r#""spiffe://example.org/agent/a/task/t\u0031""#,
        r#""spiffe://example.org""#,
        r#""spiffe://other.org/svc/s""#,
        r#""AAAAAAAAAAAAAAAAAAAAAA""#,
        r#""AAAAAAAAAAAAAAAAAAAAA""#,
        r#""BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc""#,
        r#""\u0042wcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc""#,
        r#""BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=""#,
        r#""AAAA""#,
        r#""""#,
        r#""\u0000""#,
        r#""\ud800""#,
        r#""\ud83d\ude00""#,
        "0",
        "10",
        "70",
        "-1",
        "-0",
        "1.0",
        "1e1",
        "1e400",
        "9007199254740991",
        "9007199254740992",
        "18446744073709551616",
        "true",
        "null",
        "[]",
        "{}",
        "[10]",
        r#"{"a":1,"a":2}"#,
        "[[[[[[[1]]]]]]]",
        "[[[[[[[[1]]]]]]]]",
    ];

    const CLAIM_SNIPPETS: &[&str] = &[
        ",",
        ":",
        "\"",
        "\\",
        "{",
        "}",
        "[",
        "]",
        " ",
        "\n",
        "\u{0}",
        "x",
        r#""zz":1,"#,
        r#""cth":"AAAA","#,
        r#""sub":1,"#,
    ];

    /// Payloads drawn from a valid client or server payload, members replaced or added from
    /// the names and values above, then edited up to twice: the one-pass reader and the tree
    /// reader agree on every outcome (the claims, or the error's code and detail), for both
    /// roles, and the edits reach every check of P4.
    #[test]
    fn generated_payloads_decode_as_the_tree_reader_decodes_them() {
        let a = SpiffeId::parse("spiffe://example.org/agent/a/task/t1").unwrap();
        let b = SpiffeId::parse("spiffe://example.org/svc/s").unwrap();
        let key = TaskKey::generate(Algorithm::Ed25519).unwrap();
        let ctx = |role| test_ctx(&a, key.public_key(), &b, role);
        let contexts = [ctx(Role::Client), ctx(Role::Server)];
        let outcome = |r: Result<ProofClaims>| match r {
            Ok(c) => format!("ok {c:?}"),
            Err(e) => format!("{} {:?} {}", e.code(), e.index(), e.detail()),
        };
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: usize| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x9e37_79b9_7f4a_7c15) % n as u64) as usize
        };
        let mut seen = std::collections::BTreeMap::<String, usize>::new();
        for _ in 0..30_000 {
            let mut members: Vec<(String, String)> = [
                ("aud", CLAIM_VALUES[1]),
                ("cb", CLAIM_VALUES[7]),
                ("exp", "70"),
                ("iat", "10"),
                ("jti", CLAIM_VALUES[5]),
                ("sub", CLAIM_VALUES[0]),
            ]
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
            if next(2) == 0 {
                members.push(("rth".into(), CLAIM_VALUES[7].into()));
            }
            for _ in 0..next(3) {
                let value = CLAIM_VALUES[next(CLAIM_VALUES.len())].to_owned();
                match next(3) {
                    0 => {
                        let at = next(members.len());
                        members[at].1 = value;
                    }
                    1 => {
                        let at = next(members.len());
                        members.remove(at);
                    }
                    _ => {
                        let name = CLAIM_NAMES[next(CLAIM_NAMES.len())].to_owned();
                        let at = next(members.len() + 1);
                        members.insert(at, (name, value));
                    }
                }
            }
            let body: Vec<String> = members
                .iter()
                .map(|(k, v)| format!(r#""{k}":{v}"#))
                .collect();
            let mut text = format!("{{{}}}", body.join(",")).into_bytes();
            for _ in 0..next(2) {
                match next(3) {
                    0 => {
                        let at = next(text.len() + 1);
                        let snippet = CLAIM_SNIPPETS[next(CLAIM_SNIPPETS.len())];
                        text.splice(at..at, snippet.bytes());
                    }
                    1 => {
                        let at = next(text.len() + 1);
                        let end = (at + 1 + next(4)).min(text.len());
                        text.drain(at.min(end)..end);
                    }
                    _ if !text.is_empty() => {
                        let at = next(text.len());
                        text[at] = next(256) as u8;
                    }
                    _ => {}
                }
            }
            for ctx in &contexts {
                let got = outcome(decode_claims(&text, ctx));
                let want = outcome(decode_claims_tree(&text, ctx));
                assert_eq!(
                    got,
                    want,
                    "{} as {:?}",
                    String::from_utf8_lossy(&text),
                    ctx.role
                );
                let code = got.split(' ').next().unwrap_or("").to_owned();
                *seen.entry(code).or_default() += 1;
            }
        }
        for code in [
            "ok",
            "bad_json",
            "unknown_claim",
            "missing_claim",
            "bad_claim",
            "bad_id",
        ] {
            assert!(
                seen.get(code).copied().unwrap_or(0) >= 100,
                "{code}: {seen:?}"
            );
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(crate::encoding::test_cases(2000)))]

        #[test]
        fn any_payload_bytes_decode_as_the_tree_reader_decodes_them(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            server in proptest::prelude::any::<bool>(),
        ) {
            let a = SpiffeId::parse("spiffe://example.org/agent/a/task/t1").unwrap();
            let key = TaskKey::generate(Algorithm::Ed25519).unwrap();
            let role = if server { Role::Server } else { Role::Client };
            let ctx = test_ctx(&a, key.public_key(), &a, role);
            let got = decode_claims(&bytes, &ctx).map_err(|e| (e.code(), e.detail().to_owned()));
            let want = decode_claims_tree(&bytes, &ctx).map_err(|e| (e.code(), e.detail().to_owned()));
            proptest::prop_assert_eq!(got, want);
        }

        /// `jti` and the hashes checked without a tree (and `jti` without decoding): strings of
        /// the base64url alphabet (with padding, a stray byte, an escape) of every length around
        /// the boundaries (a `jti` of 16 bytes and of 256 characters, a hash of 32 bytes), in
        /// any of the four claims, read as the tree reader reads them.
        #[test]
        fn base64url_claims_decode_as_the_tree_reader_decodes_them(
            value in proptest::prop_oneof![
                "[A-Za-z0-9_-]{0,24}",
                "[A-Za-z0-9_-]{40,46}",
                "[A-Za-z0-9_-]{250,262}",
                "[A-Za-z0-9_=+/ -]{18,46}",
                "[A-Za-z0-9_-]{20,23}(\\\\u0041|\\\\/|=|==)?",
            ],
            claim in proptest::sample::select(&["jti", "cb", "cth", "rth"][..]),
            server in proptest::prelude::any::<bool>(),
        ) {
            let a = SpiffeId::parse("spiffe://example.org/agent/a/task/t1").unwrap();
            let b = SpiffeId::parse("spiffe://example.org/svc/s").unwrap();
            let key = TaskKey::generate(Algorithm::Ed25519).unwrap();
            let role = if server { Role::Server } else { Role::Client };
            let ctx = test_ctx(&a, key.public_key(), &b, role);
            let hash = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc";
            let mut members = vec![
                ("aud", format!("{:?}", b.as_str())),
                ("cb", format!("{hash:?}")),
                ("cth", format!("{hash:?}")),
                ("exp", "70".to_owned()),
                ("iat", "10".to_owned()),
                ("jti", "\"AAAAAAAAAAAAAAAAAAAAAA\"".to_owned()),
                ("rth", format!("{hash:?}")),
                ("sub", format!("{:?}", a.as_str())),
            ];
            if !server {
                members.retain(|(k, _)| *k != "rth");
            }
            for m in &mut members {
                if m.0 == claim {
                    m.1 = format!("\"{value}\"");
                }
            }
            let body: Vec<String> = members.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            let text = format!("{{{}}}", body.join(","));
            let outcome = |r: Result<ProofClaims>| match r {
                Ok(c) => format!("ok {c:?}"),
                Err(e) => format!("{} {}", e.code(), e.detail()),
            };
            let got = outcome(decode_claims(text.as_bytes(), &ctx));
            let want = outcome(decode_claims_tree(text.as_bytes(), &ctx));
            proptest::prop_assert_eq!(got, want, "{}", text);
        }
    }

    /// A header and a payload decoded onto the stack (up to 256 and 512 bytes) or onto the heap
    /// (one byte more) verify alike, at and around each buffer's size; a signature of 63 or 65
    /// bytes (beside the 64-byte buffer) is refused alike, whatever the sizes.
    #[test]
    fn proofs_at_the_sizes_of_the_stack_buffers_verify_as_any_other() {
        let a = SpiffeId::parse("spiffe://example.org/agent/a/task/t1").unwrap();
        let b = SpiffeId::parse("spiffe://example.org/svc/s").unwrap();
        let key = TaskKey::generate(Algorithm::Es256).unwrap();
        let ctx = test_ctx(&a, key.public_key(), &b, Role::Client);
        let header = r#"{"alg":"ES256","typ":"agentid-proof+jwt"}"#;
        let payload = format!(
            r#"{{"aud":"{b}","cb":"{}","exp":70,"iat":10,"jti":"AAAAAAAAAAAAAAAAAAAAAA","sub":"{a}"}}"#,
            b64_encode(&[7; 32])
        );
        // JSON whitespace before the closing brace, to `len` bytes.
        let pad = |json: &str, len: usize| {
            let (body, _) = json.split_at(json.len() - 1);
            format!("{body}{}}}", " ".repeat(len - json.len()))
        };
        for hlen in [header.len(), 255, 256, 257, 400] {
            for plen in [payload.len(), 511, 512, 513, 2000] {
                let (h, p) = (pad(header, hlen), pad(&payload, plen));
                assert_eq!((h.len(), p.len()), (hlen, plen));
                let input = format!("{}.{}", b64_encode(h.as_bytes()), b64_encode(p.as_bytes()));
                let sig = key.sign(input.as_bytes()).unwrap();
                let token = format!("{input}.{}", b64_encode(&sig));
                let v = verify_proof(&token, &ctx)
                    .unwrap_or_else(|e| panic!("header {hlen}, payload {plen}: {e}"));
                assert_eq!(v.jti, "AAAAAAAAAAAAAAAAAAAAAA");
                let mut longer = sig.clone();
                longer.push(0);
                for bad in [&sig[..63], &longer[..]] {
                    let token = format!("{input}.{}", b64_encode(bad));
                    let e = verify_proof(&token, &ctx).unwrap_err();
                    assert_eq!(e.code(), ErrorCode::BadSignature, "{hlen}/{plen}: {e}");
                }
            }
        }
    }

    /// The written payload is the I-JSON object serde_json writes for the same members.
    #[test]
    fn a_written_payload_is_what_serde_json_writes() {
        let key = TaskKey::generate(Algorithm::Es256).unwrap();
        let a = SpiffeId::parse("spiffe://example.org/agent/a/task/t1").unwrap();
        let b = SpiffeId::parse("spiffe://example.org/svc/s").unwrap();
        let client = ProofBuilder::new(&a, &b, Role::Client, [7; 32], 10, 70)
            .chain_hash("a \"quoted\" \\ hash\u{1}")
            .sign(&key)
            .unwrap();
        let server = ProofBuilder::new(&b, &a, Role::Server, [9; 32], 1 << 53, (1 << 53) + 1)
            .responding_to(&client)
            .sign(&key)
            .unwrap();
        let plain = ProofBuilder::new(&a, &b, Role::Client, [0; 32], 0, 1)
            .sign(&key)
            .unwrap();
        for proof in [&client, &server, &plain] {
            let raw = jws::split(proof).unwrap();
            let payload = b64_decode(raw.payload_b64).unwrap();
            let map = parse_ijson_object(&payload).unwrap();
            assert_eq!(serde_json::to_vec(&map).unwrap(), payload);
        }
        let map =
            parse_ijson_object(&b64_decode(jws::split(&client).unwrap().payload_b64).unwrap())
                .unwrap();
        assert_eq!(map["cth"], "a \"quoted\" \\ hash\u{1}");
        assert_eq!(map["sub"], a.as_str());
        assert_eq!(map["aud"], b.as_str());
        assert_eq!(map["cb"], b64_encode(&[7; 32]));
        assert_eq!(map["iat"], 10);
        assert_eq!(map["exp"], 70);
        assert!(!map.contains_key("rth"));
    }

    /// The claims of a proof as step P4 reads them, pinned with each error's code and detail:
    /// I-JSON (duplicates after unescaping, escapes in names, lone surrogates, nesting, numbers
    /// out of range, trailing data), then unknown and missing claims, then each claim in order,
    /// a later I-JSON fault winning over an earlier bad claim.
    #[test]
    fn proof_payloads_pin_i_json_and_the_order_of_checks() {
        let key = TaskKey::generate(Algorithm::Ed25519).unwrap();
        let a = SpiffeId::parse("spiffe://example.org/agent/a/task/t1").unwrap();
        let b = SpiffeId::parse("spiffe://example.org/svc/s").unwrap();
        let client_proof = "client.proof.x";
        let rth = token_hash(client_proof);
        let cb = b64_encode(&[7; 32]);
        let outcome = |payload: &[u8], role: Role| {
            let token =
                sign_compact_written(TokenType::Proof, key.algorithm(), None, payload, |m| {
                    key.sign(m)
                })
                .unwrap();
            let ctx = ProofContext {
                presenter_id: &a,
                presenter_key: key.public_key(),
                verifier_id: &b,
                role,
                exporter: [7; 32],
                now: 20,
                skew: 0,
                chain: None,
                client_proof: Some(client_proof),
            };
            match verify_proof(&token, &ctx) {
                Ok(v) => format!("ok {} {} {}", v.jti, v.iat, v.exp),
                Err(e) => format!("{} {}", e.code(), e.detail()),
            }
        };
        // A valid client payload with `$X` standing for more members, and one of each claim.
        let base = format!(
            r#"{{$X"aud":"{b}","cb":"{cb}","exp":70,"iat":10,"jti":"AAAAAAAAAAAAAAAAAAAAAA","sub":"{a}"}}"#,
            a = a.as_str(),
            b = b.as_str()
        );
        let with = |extra: &str| base.replace("$X", extra);
        let without = |name: &str| {
            let v: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(&with("")).unwrap();
            let mut v = v;
            v.remove(name);
            serde_json::to_string(&v).unwrap()
        };
        let c = Role::Client;
        let s = Role::Server;
        let rth_member = format!(r#""rth":"{rth}","#);
        #[rustfmt::skip]
        let cases: Vec<(String, Role, &str)> = vec![
            (with(""), c, r##"ok AAAAAAAAAAAAAAAAAAAAAA 10 70"##),
            (with(&rth_member), s, r##"ok AAAAAAAAAAAAAAAAAAAAAA 10 70"##),
            (with(""), s, r##"missing_claim missing claim `rth`"##),
            (with(&rth_member), c, r##"unknown_claim unknown claim `rth`"##),
            // duplicates, compared after unescaping
            (with(r#""s\u0075b":"x","#), c, r##"bad_json not I-JSON: duplicate member name "sub" at line 1 column 156"##),
            (with(r#""jti":"AAAAAAAAAAAAAAAAAAAAAA","#), c, r##"bad_json not I-JSON: duplicate member name "jti" at line 1 column 141"##),
            (with(r#""x":1,"\u0078":1,"#), c, r##"bad_json not I-JSON: duplicate member name "x" at line 1 column 15"##),
            (with(r#""x":{"a":1,"\u0061":2},"#), c, r##"bad_json not I-JSON: duplicate member name "a" at line 1 column 20"##),
            // escapes in names and values
            (with(r#""\u0000":1,"#), c, r##"unknown_claim unknown claim `�`"##),
            (with(r#""su\u0000b":1,"#), c, r##"unknown_claim unknown claim `su�b`"##),
            (base.replace("$X", "").replace(r#""jti":"AAAA"#, r#""j\u0074i":"\u0041AAA"#), c, r##"ok AAAAAAAAAAAAAAAAAAAAAA 10 70"##),
            // lone surrogates
            (with(r#""x":"\ud800","#), c, r##"bad_json not I-JSON: unexpected end of hex escape at line 1 column 13"##),
            (with(r#""\udc00":1,"#), c, r##"bad_json not I-JSON: lone leading surrogate in hex escape at line 1 column 8"##),
            (with(r#""x":"\ud83d\ude00","#), c, r##"unknown_claim unknown claim `x`"##),
            // nested values in claims, and nesting
            (base.replace("$X", "").replace(r#""jti":"AAAAAAAAAAAAAAAAAAAAAA""#, r#""jti":{"a":{}}"#), c, r##"bad_claim `jti` must be a string"##),
            (base.replace("$X", "").replace(r#""iat":10"#, r#""iat":[10]"#), c, r##"bad_claim `iat` must be an integer in [0, 2^53-1]"##),
            (with(r#""x":[[[[[[[1]]]]]]],"#), c, r##"unknown_claim unknown claim `x`"##),
            (with(r#""x":[[[[[[[[1]]]]]]]],"#), c, r##"bad_json not I-JSON: nesting deeper than 8 at line 1 column 13"##),
            (with(r#""sub":[[[[[[[[1]]]]]]]],"#), c, r##"bad_json not I-JSON: nesting deeper than 8 at line 1 column 15"##),
            // numbers
            (base.replace("$X", "").replace(r#""iat":10"#, r#""iat":10.0"#), c, r##"bad_claim `iat` must be an integer in [0, 2^53-1]"##),
            (base.replace("$X", "").replace(r#""iat":10"#, r#""iat":1e1"#), c, r##"bad_claim `iat` must be an integer in [0, 2^53-1]"##),
            (base.replace("$X", "").replace(r#""iat":10"#, r#""iat":-0"#), c, r##"bad_claim `iat` must be an integer in [0, 2^53-1]"##),
            (base.replace("$X", "").replace(r#""iat":10"#, r#""iat":-1"#), c, r##"bad_claim `iat` must be an integer in [0, 2^53-1]"##),
            (base.replace("$X", "").replace(r#""iat":10"#, r#""iat":"10""#), c, r##"bad_claim `iat` must be an integer in [0, 2^53-1]"##),
            (base.replace("$X", "").replace(r#""exp":70"#, r#""exp":9007199254740992"#), c, r##"bad_claim `exp` must be an integer in [0, 2^53-1]"##),
            (base.replace("$X", "").replace(r#""exp":70"#, r#""exp":18446744073709551616"#), c, r##"bad_claim `exp` must be an integer in [0, 2^53-1]"##),
            (base.replace("$X", "").replace(r#""exp":70"#, r#""exp":1e400"#), c, r##"bad_json not I-JSON: number out of range at line 1 column 98"##),
            // trailing data; the top level
            (format!("{} x", with("")), c, r##"bad_json trailing data: trailing characters at line 1 column 183"##),
            (format!("{}{{}}", with("")), c, r##"bad_json trailing data: trailing characters at line 1 column 182"##),
            (format!("{} \n", with("")), c, r##"ok AAAAAAAAAAAAAAAAAAAAAA 10 70"##),
            ("[]".into(), c, r##"bad_json top level is not an object"##),
            ("[] x".into(), c, r##"bad_json trailing data: trailing characters at line 1 column 4"##),
            ("{}".into(), c, r##"missing_claim missing claim `sub`"##),
            ("null".into(), c, r##"bad_json top level is not an object"##),
            // a later I-JSON fault wins over an earlier bad claim
            (base.replace("$X", r#""sub":1,"#).replace(r#""iat":10"#, r#""iat":1e400"#), c, r##"bad_json not I-JSON: number out of range at line 1 column 115"##),
            (with(r#""zz":1,"cb":1,"x":[[[[[[[[1]]]]]]]],"#), c, r##"bad_json not I-JSON: nesting deeper than 8 at line 1 column 27"##),
            (format!("{} x", with(r#""zz":1,"#)), c, r##"bad_json trailing data: trailing characters at line 1 column 190"##),
            (with(r#""aud":"x","aud":"y","#), c, r##"bad_json not I-JSON: duplicate member name "aud" at line 1 column 16"##),
            // unknown, then missing claims, then each claim in order
            (with(r#""zz":1,"aa":2,"#), c, r##"unknown_claim unknown claim `aa`"##),
            (with(r#""zz":1,"#).replace(r#""sub""#, r#""sux""#), c, r##"unknown_claim unknown claim `sux`"##),
            (with(r#""rth":1,"a":1,"#), c, r##"unknown_claim unknown claim `a`"##),
            (with(r#""rth":1,"s":1,"#), c, r##"unknown_claim unknown claim `rth`"##),
            (with(r#""ver":1,"#), c, r##"unknown_claim unknown claim `ver`"##),
            (without("sub"), c, r##"missing_claim missing claim `sub`"##),
            (without("cb"), c, r##"missing_claim missing claim `cb`"##),
            (without("iat").replace(r#""sub":"#, r#""sub":1,"x":"#), c, r##"unknown_claim unknown claim `x`"##),
            (without("jti"), s, r##"missing_claim missing claim `jti`"##),
            (with(&format!(r#""cth":1,{rth_member}"#)), s, r##"bad_claim `cth` must be a string"##),
            (base.replace("$X", "").replace(r#""sub":"spiffe"#, r#""sub":"spiffX"#).replace(r#""iat":10"#, r#""iat":"x""#), c, r##"bad_id scheme is not exactly `spiffe://`"##),
            (base.replace("$X", r#""cth":"AAAA","#).replace(r#""sub":"spiffe"#, r#""sub":"spiffX"#), c, r##"bad_id scheme is not exactly `spiffe://`"##),
            (base.replace("$X", "").replace(r#""aud":"spiffe"#, r#""aud":1,"x":"#), c, r##"bad_json not I-JSON: expected value at line 1 column 14"##),
            (base.replace("$X", "").replace(r#""iat":10"#, r#""iat":1"#).replace(r#""exp":70"#, r#""exp":"x""#), c, r##"bad_claim `exp` must be an integer in [0, 2^53-1]"##),
            (base.replace("$X", "").replace(r#""jti":"AAAAAAAAAAAAAAAAAAAAAA""#, r#""jti":"AAAA""#).replace(r#""cb":"#, r#""cb":1,"x":"#), c, r##"unknown_claim unknown claim `x`"##),
            (base.replace(&format!(r#""sub":"{}""#, a.as_str()), r#""sub":1"#).replace("$X", ""), c, r##"bad_claim `sub` must be a string"##),
            (base.replace(&format!(r#""aud":"{}""#, b.as_str()), r#""aud":null"#).replace("$X", ""), c, r##"bad_claim `aud` must be a string"##),
            (base.replace(&format!(r#""cb":"{cb}""#), r#""cb":[]"#).replace("$X", ""), c, r##"bad_claim `cb` must be a string"##),
            (r#"{"zz":1}"#.into(), c, r##"unknown_claim unknown claim `zz`"##),
            (r#"{"sub":1}"#.into(), s, r##"missing_claim missing claim `aud`"##),
            (base.replace("$X", "").replace(&cb, "AAAA"), c, r##"bad_claim `cb` must encode 32 bytes"##),
            (with(r#""cth":"AAAA","#), c, r##"bad_claim `cth` must encode 32 bytes"##),
            (with(r#""cth":null,"#), c, r##"bad_claim `cth` must be a string"##),
            (with(r#""rth":"AAAA","#), s, r##"bad_claim `rth` must encode 32 bytes"##),
            (base.replace("$X", "").replace(r#""iat":10"#, r#""iat":80"#), c, r##"bad_validity proof `iat` must be before `exp`"##),
        ];
        let mut wrong = String::new();
        for (payload, role, want) in &cases {
            let got = outcome(payload.as_bytes(), *role);
            if got != *want {
                wrong.push_str(&format!(
                    "{payload} as {role:?}\n  got  {got}\n  want {want}\n"
                ));
            }
        }
        for (payload, want) in [
            (
                [with("").as_bytes(), b"\xff"].concat(),
                r##"bad_json not UTF-8: invalid utf-8 sequence of 1 bytes from index 181"##,
            ),
            (
                with(r#""x":"\x","#).into_bytes(),
                r##"bad_json not I-JSON: invalid escape at line 1 column 8"##,
            ),
            (
                b"{\"sub\":\"\xff\"}".to_vec(),
                r##"bad_json not UTF-8: invalid utf-8 sequence of 1 bytes from index 8"##,
            ),
        ] {
            let got = outcome(&payload, c);
            if got != want {
                wrong.push_str(&format!("{payload:?}\n  got  {got}\n  want {want}\n"));
            }
        }
        assert!(wrong.is_empty(), "\n{wrong}");
    }

    /// A server proof answering a verified client proof binds the `rth` that responding to
    /// the compact client proof binds, whatever the client's key.
    #[test]
    fn answering_a_verified_proof_binds_the_hash_of_its_compact_form() {
        let a = SpiffeId::parse("spiffe://example.org/agent/a/task/t1").unwrap();
        let b = SpiffeId::parse("spiffe://example.org/svc/s").unwrap();
        for alg in [Algorithm::Es256, Algorithm::Ed25519] {
            let key = TaskKey::generate(alg).unwrap();
            let client = ProofBuilder::new(&a, &b, Role::Client, [7; 32], 10, 70)
                .sign(&key)
                .unwrap();
            let ctx = test_ctx(&a, key.public_key(), &b, Role::Client);
            let verified = verify_proof(&client, &ctx).unwrap();
            assert_eq!(
                verified.hash.is_some(),
                alg == Algorithm::Es256,
                "{alg}: the hash comes with the signature check of ES256 only"
            );
            let rth = |b: ProofBuilder| b.rth.unwrap();
            let builder = || ProofBuilder::new(&b, &a, Role::Server, [9; 32], 10, 70);
            assert_eq!(
                rth(builder().answering(&verified)),
                rth(builder().responding_to(&client))
            );
            assert_eq!(rth(builder().answering(&verified)), token_hash(&client));
        }
    }
}
