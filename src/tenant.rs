//! Tenant identity: the `X-Scope-OrgID` a request acts for.
//!
//! Owns the newtype and its validation; it does not own authentication (there is none
//! beyond the header, as in Loki) or per-tenant limits (`limits`).

use std::fmt;

/// A tenant id as sent in `X-Scope-OrgID`; `fake` when auth is off.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(String);

/// For maps that clone a borrowed key only when inserting it (hashbrown's `entry_ref`).
impl From<&TenantId> for TenantId {
    fn from(t: &TenantId) -> Self {
        t.clone()
    }
}

/// The tenant every request acts as when `auth_enabled` is false, as in Loki.
pub const DEFAULT_TENANT: &str = "fake";

/// Why a tenant id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenantError {
    #[error("no org id: send the X-Scope-OrgID header (auth_enabled is true)")]
    Missing,
    #[error("invalid tenant id {0:?}: use at most 150 characters from [a-zA-Z0-9!._*'()-], not \".\" or \"..\"")]
    Invalid(String),
}

impl TenantId {
    /// Validates a tenant id with Loki's rules (it becomes a directory name on disk).
    pub fn new(id: &str) -> Result<Self, TenantError> {
        let ok_char = |c: char| c.is_ascii_alphanumeric() || "!-_.*'()".contains(c);
        if id.is_empty() {
            return Err(TenantError::Missing);
        }
        if id.len() > 150 || id == "." || id == ".." || !id.chars().all(ok_char) {
            return Err(TenantError::Invalid(id.to_string()));
        }
        Ok(TenantId(id.to_string()))
    }

    /// The tenant used when auth is off.
    pub fn default_tenant() -> Self {
        TenantId(DEFAULT_TENANT.to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_path_tricks_and_accepts_loki_charset() {
        assert!(TenantId::new("team-a.prod_1").is_ok());
        assert_eq!(TenantId::new(""), Err(TenantError::Missing));
        assert!(TenantId::new("..").is_err());
        assert!(TenantId::new("a/b").is_err());
    }
}
