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
        let unauthenticated = |m: &str| ApiError::new(ProblemCode::Unauthenticated, m);
        let header = parts.headers.get(AUTHORIZATION).ok_or_else(|| {
            unauthenticated("send an API token as 'Authorization: Bearer <token>'")
        })?;
        let secret = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| t.starts_with(TOKEN_PREFIX) && t.len() <= 128)
            .ok_or_else(|| unauthenticated("the Authorization header must be 'Bearer <token>'"))?;
        let principal = state
            .store
            .authenticate(&hash_secret(secret))
            .await?
            .ok_or_else(|| unauthenticated("the token is unknown, expired or revoked"))?;
        state
            .token_use
            .record(&state.store, principal.token_id)
            .await;
        Ok(Self(principal))
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
