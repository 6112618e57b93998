//! Who may see what: the [`Authorizer`] an embedder implements, the [`Grant`] it answers with,
//! and [`BearerTokens`], a fixed map of tokens.

use std::collections::BTreeSet;
use std::fmt;

use async_trait::async_trait;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

/// The environments a caller may see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Environments {
    /// Every environment.
    All,
    /// Only these.
    Only(BTreeSet<String>),
}

impl Environments {
    /// Whether `environment` is among them.
    pub fn contains(&self, environment: &str) -> bool {
        match self {
            Environments::All => true,
            Environments::Only(set) => set.contains(environment),
        }
    }
}

/// What an authorized caller may do: see some environments (their Operations, logs and
/// reports) and, unless read-only, cancel their Operations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    principal: String,
    environments: Environments,
    may_cancel: bool,
}

impl Grant {
    /// A grant to `principal` (the name recorded as the actor of a cancel that names none) over
    /// `environments`, with the right to cancel.
    pub fn new(principal: impl Into<String>, environments: Environments) -> Self {
        Grant { principal: principal.into(), environments, may_cancel: true }
    }

    /// A grant over every environment.
    pub fn all(principal: impl Into<String>) -> Self {
        Grant::new(principal, Environments::All)
    }

    /// A grant over the environments named.
    pub fn only<I, E>(principal: impl Into<String>, environments: I) -> Self
    where
        I: IntoIterator<Item = E>,
        E: Into<String>,
    {
        Grant::new(
            principal,
            Environments::Only(environments.into_iter().map(Into::into).collect()),
        )
    }

    /// The same grant without the right to cancel.
    pub fn read_only(mut self) -> Self {
        self.may_cancel = false;
        self
    }

    /// Who the caller is.
    pub fn principal(&self) -> &str {
        &self.principal
    }

    /// The environments the caller may see.
    pub fn environments(&self) -> &Environments {
        &self.environments
    }

    /// Whether the caller may see `environment`.
    pub fn may_see(&self, environment: &str) -> bool {
        self.environments.contains(environment)
    }

    /// Whether the caller may cancel the Operations it sees.
    pub fn may_cancel(&self) -> bool {
        self.may_cancel
    }
}

/// Why a caller was not authorized.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The token is not one the authorizer knows: the API answers 401.
    #[error("the token was refused")]
    Refused,
    /// The authorizer could not decide (its backend is down): the API answers 503.
    #[error("authorization is unavailable: {0}")]
    Unavailable(String),
}

/// Decides, from a request's bearer token, what the caller may see and do.
///
/// The router calls it once per request with the token of the `Authorization: Bearer` header
/// (or of the dashboard's cookie), never with an empty one: a request without a token is
/// answered 401 before. It may be called concurrently and must not keep the token. An
/// [`AuthError::Refused`] answers 401 with `WWW-Authenticate: Bearer`; an
/// [`AuthError::Unavailable`] answers 503. Compare secrets in constant time (as
/// [`BearerTokens`] does).
///
/// ```
/// use saga_admin::{async_trait, AuthError, Authorizer, Grant};
///
/// /// Every token that starts with `ops-` may see `staging`, read-only.
/// struct Prefix;
///
/// #[async_trait]
/// impl Authorizer for Prefix {
///     async fn authorize(&self, token: &str) -> Result<Grant, AuthError> {
///         match token.strip_prefix("ops-") {
///             Some(name) => Ok(Grant::only(name, ["staging"]).read_only()),
///             None => Err(AuthError::Refused),
///         }
///     }
/// }
/// ```
#[async_trait]
pub trait Authorizer: Send + Sync + 'static {
    /// What the holder of `token` may see and do.
    async fn authorize(&self, token: &str) -> Result<Grant, AuthError>;
}

/// A fixed map of bearer tokens to grants.
///
/// Tokens are kept as SHA-256 digests and compared in constant time against the digest of the
/// presented token, every entry each time, so that neither the comparison nor the position of
/// a match tells an attacker how much of a guess was right. `Debug` shows the principals only.
///
/// ```
/// use saga_admin::{BearerTokens, Grant};
/// let tokens = BearerTokens::new()
///     .token("s3cret-admin", Grant::all("admin"))
///     .token("s3cret-staging", Grant::only("ci", ["staging"]).read_only());
/// assert!(format!("{tokens:?}").contains("admin"));
/// assert!(!format!("{tokens:?}").contains("s3cret"));
/// ```
#[derive(Clone, Default)]
pub struct BearerTokens {
    entries: Vec<([u8; 32], Grant)>,
}

impl BearerTokens {
    /// No tokens: every request is refused.
    pub fn new() -> Self {
        BearerTokens::default()
    }

    /// Adds a token. An empty token is never accepted, so adding one does nothing.
    pub fn token(mut self, token: impl AsRef<str>, grant: Grant) -> Self {
        let token = token.as_ref();
        if !token.is_empty() {
            self.entries.push((digest(token), grant));
        }
        self
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl fmt::Debug for BearerTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BearerTokens")
            .field(
                "principals",
                &self.entries.iter().map(|(_, g)| g.principal()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

#[async_trait]
impl Authorizer for BearerTokens {
    async fn authorize(&self, token: &str) -> Result<Grant, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Refused);
        }
        let presented = digest(token);
        let mut found = None;
        for (known, grant) in &self.entries {
            if bool::from(known.ct_eq(&presented)) {
                found = Some(grant);
            }
        }
        found.cloned().ok_or(AuthError::Refused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tokens_match_exactly() {
        let tokens = BearerTokens::new()
            .token("alpha", Grant::all("a"))
            .token("beta", Grant::only("b", ["dev"]))
            .token("", Grant::all("empty"));
        assert_eq!(
            tokens.authorize("alpha").await.map(|g| g.principal().to_owned()).ok(),
            Some("a".into())
        );
        let beta = tokens.authorize("beta").await.expect("beta");
        assert!(beta.may_see("dev") && !beta.may_see("prod"));
        for wrong in ["", "alph", "alphaa", "ALPHA", "beta "] {
            assert!(matches!(tokens.authorize(wrong).await, Err(AuthError::Refused)), "{wrong:?}");
        }
    }
}
