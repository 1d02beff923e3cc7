//! Request bodies of the CA API as every route reads them once they have arrived
//! (spec/CA-API.md 1.2); the service answers a refusal `400 bad_request`.

/// Why a request body was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BodyError {
    /// Not an I-JSON object (invalid UTF-8 or JSON, a member named twice, nesting over 8, not
    /// an object).
    NotIJson(String),
    /// An I-JSON object, but not the route's JSON (a missing or unknown member, a wrong type).
    NotTheRoutes(String),
}

impl core::fmt::Display for BodyError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BodyError::NotIJson(e) => write!(f, "the body is not an I-JSON object: {e}"),
            BodyError::NotTheRoutes(e) => write!(f, "the body is not this route's JSON: {e}"),
        }
    }
}

impl std::error::Error for BodyError {}

/// Reads a request body as the route's JSON `T` (such as `agentid_api::EnrollRequest`), only
/// if it is an I-JSON object: serde reads a struct from an array of its fields in order too,
/// and takes the last of a member named twice in a map (a `principal`, `limits`), where
/// another parser takes the first: neither is a body a replica would read the same.
pub fn parse_request_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, BodyError> {
    agentid_protocol::ijson::parse_object(bytes).map_err(|e| BodyError::NotIJson(e.to_string()))?;
    serde_json::from_slice(bytes).map_err(|e| BodyError::NotTheRoutes(e.to_string()))
}
