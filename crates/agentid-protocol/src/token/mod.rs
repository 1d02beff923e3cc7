//! Grants and links: the typed builders that sign them, and their claims.

pub(crate) mod claims;
mod grant;
mod link;
pub(crate) mod members;
#[cfg(test)]
mod oracle;

pub use claims::{check_principal, Mode, MAX_DEPTH};
pub use grant::GrantBuilder;
pub use link::LinkBuilder;

/// Maximum lifetime (`exp - iat`) of a grant or link: 24 hours.
pub const MAX_TOKEN_LIFETIME: u64 = 24 * 60 * 60;
