//! API tokens: random secrets, stored as SHA-256 hashes, checked on every request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use qb_api::{ProblemCode, Role, TokenId};
use qb_store::{Actor, Principal, Store};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::{ApiError, AppState};

/// Every token starts with this, so leaked tokens are easy to recognize and scan for.
pub const TOKEN_PREFIX: &str = "qb_";

/// A new API token secret and the hash that is stored in its place.
pub fn new_secret() -> (String, String) {
    let s = new_secret_with(TOKEN_PREFIX);
    (s.secret, s.hash)
}

/// A new secret of 256 random bits behind `prefix`, and its hash.
pub fn new_secret_with(prefix: &str) -> qb_store::NewSecret {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let secret = format!("{prefix}{}", hex::encode(bytes));
    let hash = hash_secret(&secret);
    qb_store::NewSecret { secret, hash }
}

/// Whether `s` has a token's form (before it is looked up).
pub(crate) fn looks_like_token(s: &str) -> bool {
    s.starts_with(TOKEN_PREFIX) && s.len() <= 128
}

/// The stored form of a token. Tokens carry 256 random bits, so a fast hash is enough.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// The authenticated caller of a request.
#[derive(Clone, Debug)]
pub struct Caller(pub Principal);

impl Caller {
    /// Refuses the call unless the caller's role is at least `role`.
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.0.role >= role {
            Ok(())
        } else {
            Err(ApiError::new(
                ProblemCode::Forbidden,
                format!(
                    "this needs the {} role; you are {}",
                    role.as_str(),
                    self.0.role.as_str()
                ),
            ))
        }
    }

    pub fn actor(&self) -> Actor {
        Actor::user(self.0.user.as_str())
    }

    pub fn tenant(&self) -> qb_api::TenantId {
        self.0.tenant_id
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // A request that names a token is judged by it alone, never by a cookie beside it.
        let caller = if parts.headers.contains_key(AUTHORIZATION) {
            Self::authenticate(state, &hash_secret(bearer_secret(parts)?)).await?
        } else {
            let secret = crate::session::cookie_secret(&parts.headers).ok_or_else(|| {
                unauthenticated("send an API token as 'Authorization: Bearer <token>', or log in")
            })?;
            // Browsers send cookies with requests other sites make them send; only this
            // site's pages know the session's CSRF token. Reads change nothing and need none.
            if !parts.method.is_safe() {
                crate::session::check_csrf(&parts.headers, secret)?;
            }
            Self::authenticate(state, &hash_secret(secret)).await?
        };
        if let Some(slot) = parts.extensions.get::<crate::audit::RequestCaller>() {
            slot.set(&caller.0);
        }
        Ok(caller)
    }
}

impl Caller {
    /// The caller whose token has this hash, from the store.
    pub(crate) async fn authenticate(
        state: &AppState,
        secret_hash: &str,
    ) -> Result<Self, ApiError> {
        let principal = state
            .store
            .authenticate(secret_hash)
            .await?
            .ok_or_else(|| unauthenticated("the token is unknown, expired or revoked"))?;
        state
            .token_use
            .record(&state.store, principal.token_id)
            .await;
        Ok(Self(principal))
    }
}

pub(crate) fn unauthenticated(message: &str) -> ApiError {
    ApiError::new(ProblemCode::Unauthenticated, message)
}

/// The token secret of a request's `Authorization: Bearer` header.
pub(crate) fn bearer_secret(parts: &Parts) -> Result<&str, ApiError> {
    let header = parts
        .headers
        .get(AUTHORIZATION)
        .ok_or_else(|| unauthenticated("send an API token as 'Authorization: Bearer <token>'"))?;
    header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| looks_like_token(t))
        .ok_or_else(|| unauthenticated("the Authorization header must be 'Bearer <token>'"))
}

/// Callers authenticated in the last second, by their token's hash. The Kubernetes API proxy
/// re-authorizes every request, and kubectl sends many small ones: they should not each wait
/// for the store. A revoked token stops working here within [`RecentCallers::FRESH`]; an
/// expired one at once.
#[derive(Default)]
pub struct RecentCallers {
    seen: Mutex<HashMap<String, (Principal, Instant)>>,
}

impl RecentCallers {
    const FRESH: Duration = Duration::from_secs(1);
    /// Beyond this many, stale entries are dropped before another is added.
    const PRUNE_ABOVE: usize = 4096;

    /// The request's caller, from the store at most once a second per token.
    pub async fn caller(&self, parts: &Parts, state: &AppState) -> Result<Caller, ApiError> {
        let hash = hash_secret(bearer_secret(parts)?);
        let now = Instant::now();
        let recent = self
            .lock()
            .get(&hash)
            .filter(|(principal, at)| {
                now.duration_since(*at) < Self::FRESH
                    && principal.token_expires_at > time::OffsetDateTime::now_utc()
            })
            .map(|(principal, _)| principal.clone());
        if let Some(principal) = recent {
            return Ok(Caller(principal));
        }
        let caller = Caller::authenticate(state, &hash).await?;
        let mut seen = self.lock();
        if seen.len() >= Self::PRUNE_ABOVE {
            seen.retain(|_, (_, at)| now.duration_since(*at) < Self::FRESH);
        }
        seen.insert(hash, (caller.0.clone(), now));
        Ok(caller)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Principal, Instant)>> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Records when tokens were last used, writing at most once a minute per token so that reads
/// stay reads.
#[derive(Clone, Default)]
pub struct TokenUse {
    flushed: Arc<Mutex<HashMap<TokenId, Instant>>>,
}

impl TokenUse {
    const EVERY: Duration = Duration::from_secs(60);

    async fn record(&self, store: &Store, id: TokenId) {
        let due = {
            let mut flushed = self
                .flushed
                .lock()
                .expect("token-use map lock is never poisoned");
            let now = Instant::now();
            match flushed.get(&id) {
                Some(at) if now.duration_since(*at) < Self::EVERY => false,
                _ => {
                    flushed.insert(id, now);
                    true
                }
            }
        };
        if due && let Err(e) = store.touch_token(id, time::OffsetDateTime::now_utc()).await {
            tracing::warn!(token_id = %id, error = %e, "could not record token use");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_random_prefixed_and_hashed() {
        let (a, ha) = new_secret();
        let (b, hb) = new_secret();
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() == 67, "{a}");
        assert_eq!(ha, hash_secret(&a));
        assert_ne!(ha, hb);
        assert!(!ha.contains(&a[3..]));
    }
}
