//! `config.toml`: the CA's fixed settings.

use std::path::Path;

use agentid_protocol::TrustDomain;
use serde::{Deserialize, Serialize};

use crate::error::{CaError, Result};
use crate::signer::KeyType;

/// Default clock skew allowance, seconds: certificates are back-dated by it and revocation
/// entries outlive what they cover by it.
pub const DEFAULT_SKEW_SECS: u64 = 60;
/// Default revocation list refresh: `next_update = iat + 10 min`.
pub const DEFAULT_NEXT_UPDATE_SECS: u64 = 600;

/// The CA's configuration, written by `ca init`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaConfig {
    /// The trust domain this CA issues for.
    pub trust_domain: TrustDomain,
    /// Key type of the CA hierarchy and authority keys.
    pub key_type: KeyType,
    /// Clock skew allowance in seconds.
    #[serde(default = "default_skew")]
    pub skew_secs: u64,
    /// Seconds from a revocation list's `iat` to its `next_update`.
    #[serde(default = "default_next_update")]
    pub revocation_next_update_secs: u64,
}

fn default_skew() -> u64 {
    DEFAULT_SKEW_SECS
}
fn default_next_update() -> u64 {
    DEFAULT_NEXT_UPDATE_SECS
}

impl CaConfig {
    /// A configuration with default skew and refresh interval.
    pub fn new(trust_domain: TrustDomain, key_type: KeyType) -> Self {
        CaConfig {
            trust_domain,
            key_type,
            skew_secs: DEFAULT_SKEW_SECS,
            revocation_next_update_secs: DEFAULT_NEXT_UPDATE_SECS,
        }
    }

    /// Reads and validates `config.toml`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| CaError::io(path, e))?;
        let cfg: CaConfig =
            toml::from_str(&text).map_err(|e| CaError::material(path, e.to_string()))?;
        if cfg.skew_secs > 120 {
            return Err(CaError::material(path, "skew_secs must be at most 120"));
        }
        if cfg.revocation_next_update_secs == 0 {
            return Err(CaError::material(
                path,
                "revocation_next_update_secs must be positive",
            ));
        }
        Ok(cfg)
    }

    pub(crate) fn to_toml(&self) -> Result<String> {
        toml::to_string(self).map_err(|e| CaError::InvalidRequest(e.to_string()))
    }
}
