//! The one error type of the protocol crate.
//!
//! Every failure carries a stable, machine-readable [`ErrorCode`] (the same strings the spec's
//! error table and the test vectors use) and, where the failure is tied to one token of a chain,
//! that token's index (0 = the grant).

use core::fmt;

macro_rules! codes {
    ($( $(#[$doc:meta])* $variant:ident => $code:literal, )*) => {
        /// A stable machine-readable error code.
        ///
        /// The string form ([`ErrorCode::as_str`]) is normative: spec/PROTOCOL.md lists it and the
        /// vectors in spec/vectors/ use it.
        #[non_exhaustive]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $( $(#[$doc])* $variant, )*
        }

        impl ErrorCode {
            /// Every code, in the order of the spec's table.
            pub const ALL: &'static [ErrorCode] = &[ $( ErrorCode::$variant, )* ];

            /// The stable string form, e.g. `scope_escalation`.
            pub const fn as_str(self) -> &'static str {
                match self { $( ErrorCode::$variant => $code, )* }
            }

            /// Parses the string form.
            pub fn from_code(s: &str) -> Option<Self> {
                match s { $( $code => Some(ErrorCode::$variant), )* _ => None }
            }
        }
    };
}

codes! {
    // ---- Phase 1: framing ----
    /// The chain or token is not well framed: an empty part, not three JWS parts, a wrong separator.
    Malformed => "malformed",
    /// A token exceeds 8 KiB.
    TokenTooLarge => "token_too_large",
    /// A chain exceeds 64 KiB (or, in the HTTP binding, an `agentid-chain` header exceeds
    /// 16384 bytes: spec/PROTOCOL.md section 17).
    ChainTooLarge => "chain_too_large",
    /// A chain has more than 8 links (9 tokens), or a link's `max_depth` does not allow it.
    DepthExceeded => "depth_exceeded",
    /// base64url that is padded, has whitespace or other characters, or non-canonical trailing bits.
    BadBase64 => "bad_base64",

    // ---- Phase 2: headers ----
    /// A protected header that is not an I-JSON object, or has a member outside the allow-list.
    BadHeader => "bad_header",
    /// `typ` missing or not the one expected at this position.
    BadTyp => "bad_typ",
    /// `alg` missing or not one of `ES256`, `Ed25519`, `EdDSA`.
    UnsupportedAlg => "unsupported_alg",

    // ---- Phase 3: keys, signatures, claims ----
    /// No bundle holds an `agentid-grant` key with the grant's `kid` (the own trust domain's
    /// bundle is searched first; spec/PROTOCOL.md section 10, step 3.a.1).
    UntrustedAuthority => "untrusted_authority",
    /// The trust domain holding the grant key is not an accepted authority at this verifier.
    AuthorityNotAccepted => "authority_not_accepted",
    /// `alg` does not match the verifying key.
    AlgMismatch => "alg_mismatch",
    /// The signature does not verify over the transmitted bytes.
    BadSignature => "bad_signature",
    /// The payload is not I-JSON: invalid UTF-8 or JSON, a duplicate member name, nesting deeper than 8.
    BadJson => "bad_json",
    /// A required claim is missing.
    MissingClaim => "missing_claim",
    /// A claim not defined for this token kind and version.
    UnknownClaim => "unknown_claim",
    /// A claim of the wrong type or value (including non-integer times and a bad `mode`).
    BadClaim => "bad_claim",
    /// `ver` is not 1.
    UnsupportedVersion => "unsupported_version",
    /// A `cnf.jwk` (or bundle key) that is malformed, has extra or private members, or an invalid point.
    BadKey => "bad_key",
    /// A SPIFFE ID that breaks the syntax rules or is not of the kind required here.
    BadId => "bad_id",
    /// A scope string that breaks the scope grammar.
    BadScope => "bad_scope",
    /// The grant's `iss` is not the trust domain whose bundle holds its key.
    IssuerMismatch => "issuer_mismatch",

    // ---- Phase 4: linkage and attenuation ----
    /// A link's `prev` is not the hash of the previous token.
    PrevMismatch => "prev_mismatch",
    /// A link's `iss` is not the previous token's `sub`.
    BrokenLink => "broken_link",
    /// A token's `task` differs from the grant's, or a `sub` is not of that task.
    TaskMismatch => "task_mismatch",
    /// The grant's `sub` is outside its authority's trust domain.
    ForeignHolder => "foreign_holder",
    /// A token's `sub` is a service ID (services never hold chains).
    ServiceHolder => "service_holder",
    /// A link delegates to its own issuer.
    SelfDelegation => "self_delegation",
    /// A link's scope is not covered by the previous scope.
    ScopeEscalation => "scope_escalation",
    /// A link's `aud` is not covered by the effective audience.
    AudienceEscalation => "audience_escalation",
    /// A link raises a limit above the effective ceiling.
    LimitEscalation => "limit_escalation",
    /// A chain carries a limit name this verifier does not enforce.
    UnsupportedLimit => "unsupported_limit",
    /// A link's `may_delegate_to` is not covered by the effective one.
    DelegationEscalation => "delegation_escalation",
    /// A token's `sub` is not covered by the effective `may_delegate_to`.
    DelegateeDenied => "delegatee_denied",
    /// A link's `exp` is later than the previous token's.
    ExpiryExtended => "expiry_extended",

    // ---- Phase 5: time ----
    /// `now >= exp + skew`.
    Expired => "expired",
    /// `now < nbf - skew`.
    NotYetValid => "not_yet_valid",
    /// `iat > now + skew`.
    IssuedInFuture => "issued_in_future",
    /// `nbf > exp`, or `iat < exp` violated for a proof.
    BadValidity => "bad_validity",
    /// A lifetime above its cap (grant 24 h, proof 60 s).
    LifetimeExceeded => "lifetime_exceeded",

    // ---- Phase 6: revocation ----
    /// No revocation list for a trust domain that needs one.
    RevocationMissing => "revocation_missing",
    /// A revocation list past `next_update + skew`.
    RevocationStale => "revocation_stale",
    /// A token, task, agent or key is revoked.
    Revoked => "revoked",
    /// A revocation list that does not verify or parse (including an unknown entry kind).
    BadRevocationList => "bad_revocation_list",

    // ---- Phase 7: possession ----
    /// The last `cnf` key is not the TLS peer certificate's key.
    PossessionMismatch => "possession_mismatch",
    /// The last `sub` (or a proof's `sub`) is not the peer's URI SAN.
    HolderMismatch => "holder_mismatch",

    // ---- Phase 8: audience ----
    /// The verifier is not covered by the effective audience (or a proof's `aud` is not the verifier).
    AudienceMismatch => "audience_mismatch",

    // ---- Hop proofs ----
    /// The proof's `cb` is not this connection's exporter value for the presenter's role.
    ChannelBindingMismatch => "channel_binding_mismatch",
    /// The proof's `cth` does not match the chain sent with it (or is present without a chain).
    ChainHashMismatch => "chain_hash_mismatch",
    /// The server proof's `rth` does not match the client proof.
    ResponseHashMismatch => "response_hash_mismatch",
    /// A proof whose `jti` was already seen on this connection (transport-level replay).
    ProofReplayed => "proof_replayed",

    // ---- HTTP binding (reserved: spec/PROTOCOL.md section 17; never produced by a vector) ----
    /// An HTTP request carried an `agentid-chain` header without an `agentid-proof` header.
    ProofMissing => "proof_missing",
    /// An HTTP request on a connection whose presentation was already verified (or is being
    /// verified) carried a different presentation (other `agentid-chain` or `agentid-proof`
    /// bytes); the connection fails with this code.
    PresentationChanged => "presentation_changed",

    // ---- Authorization (per request) ----
    /// The requested scope is not covered by the chain's effective scope.
    ScopeNotGranted => "scope_not_granted",
    /// The authority policy of this verifier does not let the chain's authority grant that scope here.
    AuthorityScopeDenied => "authority_scope_denied",
    /// A requested amount is above an enforced limit.
    LimitExceeded => "limit_exceeded",
    /// The peer's identity is authenticated but not admitted by the peer policy of this
    /// resource (identity-only authorization, e.g. an HTTP route guarded by a peer policy).
    /// Reserved: spec/PROTOCOL.md section 17; never produced by a vector.
    PeerDenied => "peer_denied",

    // ---- Trust bundles and configuration ----
    /// A trust bundle that does not parse or breaks the bundle rules, including a bundle of another
    /// trust domain that repeats a key `kid` already held for a different domain
    /// (spec/PROTOCOL.md section 8, "Keys across bundles").
    BadBundle => "bad_bundle",
    /// A bundle or revocation list with a lower sequence than the one held.
    SequenceRollback => "sequence_rollback",
    /// A verifier configuration that is invalid (e.g. skew above 120 s).
    BadConfig => "bad_config",
    /// A failure of the crypto backend itself (RNG, key generation, signing): never caused by
    /// input.
    Internal => "internal",
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error of the protocol crate: a stable code, the index of the offending token (if any) and a
/// human-readable detail that is never part of the contract.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}{}: {detail}", .index.map(|i| format!(" (token {i})")).unwrap_or_default())]
pub struct Error {
    code: ErrorCode,
    index: Option<usize>,
    detail: String,
}

/// The most bytes of an error's detail kept ([`Error::new`]).
pub const MAX_DETAIL_BYTES: usize = 1024;

/// `detail` fit for a log line: control characters (newlines, terminal escapes) replaced by
/// U+FFFD, cut to [`MAX_DETAIL_BYTES`] at a character boundary (`...` marking the cut). A
/// detail may quote a token's text (a claim's name, a mode, a limit's key), which whoever signs
/// a link chooses.
fn clean_detail(detail: String) -> String {
    clean_text(detail, MAX_DETAIL_BYTES)
}

/// `text` made fit for an error or a log line: control characters (newlines, terminal escapes)
/// replaced by U+FFFD, cut to at most `max` bytes at a character boundary (`...` marking the
/// cut). For text a peer chose: an error detail, a reason code or message from the wire.
pub fn clean_text(text: String, max: usize) -> String {
    const CUT: &str = "...";
    if text.len() <= max && !text.chars().any(char::is_control) {
        return text;
    }
    let mut out = String::with_capacity(max);
    let mut cut = false;
    for c in text.chars() {
        let c = if c.is_control() { '\u{fffd}' } else { c };
        if out.len() + c.len_utf8() > max {
            cut = true;
            break;
        }
        out.push(c);
    }
    if cut {
        // Room for the mark: drop characters from the end until it fits.
        while out.len() + CUT.len() > max {
            if out.pop().is_none() {
                break;
            }
        }
        out.push_str(CUT);
    }
    out
}

impl Error {
    /// A new error with no token index. The detail keeps at most [`MAX_DETAIL_BYTES`], its
    /// control characters replaced by U+FFFD (it may quote a peer's text and is logged).
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self {
            code,
            index: None,
            detail: clean_detail(detail.into()),
        }
    }

    /// The same error, tied to token `index` (0 = grant).
    #[must_use]
    pub fn at(mut self, index: usize) -> Self {
        self.index = Some(index);
        self
    }

    /// The stable code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The index of the offending token, if the failure is tied to one.
    pub fn index(&self) -> Option<usize> {
        self.index
    }

    /// The human-readable detail (not part of the contract).
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

/// Shorthand for the crate's results.
pub type Result<T, E = Error> = core::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peers_text_is_kept_clean_and_cut_at_a_character_boundary() {
        assert_eq!(clean_text("revoked".into(), 64), "revoked");
        assert_eq!(clean_text("a\nb\u{1b}c".into(), 64), "a\u{fffd}b\u{fffd}c");
        let long = clean_text("é".repeat(100), 64);
        assert!(long.len() <= 64 && long.ends_with("..."), "{long}");
        assert!(long.trim_end_matches("...").chars().all(|c| c == 'é'));
        assert_eq!(clean_text("x".repeat(64), 64).len(), 64);
        assert_eq!(
            clean_text("x".repeat(65), 64),
            format!("{}...", "x".repeat(61))
        );
    }

    #[test]
    fn codes_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            assert!(seen.insert(c.as_str()), "duplicate code {c}");
            assert_eq!(ErrorCode::from_code(c.as_str()), Some(*c));
        }
        assert_eq!(ErrorCode::from_code("nope"), None);
    }

    #[test]
    fn a_detail_is_kept_clean_and_cut_at_a_character_boundary() {
        assert_eq!(Error::new(ErrorCode::BadJson, "plain").detail(), "plain");
        assert_eq!(
            Error::new(ErrorCode::BadJson, "a\nb\u{1b}").detail(),
            "a\u{fffd}b\u{fffd}"
        );
        let e = Error::new(ErrorCode::BadJson, "é".repeat(MAX_DETAIL_BYTES));
        assert!(e.detail().len() <= MAX_DETAIL_BYTES && e.detail().ends_with("..."));
        assert!(e.detail().trim_end_matches("...").chars().all(|c| c == 'é'));
        let exact = "x".repeat(MAX_DETAIL_BYTES);
        assert_eq!(
            Error::new(ErrorCode::BadJson, exact.clone()).detail(),
            exact
        );
    }

    #[test]
    fn display_names_code_and_index() {
        let e = Error::new(ErrorCode::ScopeEscalation, "x").at(2);
        assert_eq!(e.to_string(), "scope_escalation (token 2): x");
    }
}
