//! Users' passwords, for logging in to the web UI: stored as Argon2id hashes, checked off the
//! async threads, and failed logins throttled per user.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use qb_api::{ProblemCode, SetPassword};
use rand::RngCore;

use crate::ApiError;

/// The stored form of a password: an Argon2id PHC string with a random salt.
pub fn hash(password: &str) -> String {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).expect("16 bytes make a valid salt");
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("Argon2 with its default parameters hashes any password")
        .to_string()
}

/// Whether `password` is the one `stored` is the hash of. A malformed hash matches nothing.
pub fn verify(password: &str, stored: &str) -> bool {
    PasswordHash::new(stored).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

/// A hash no one knows the password of: checked when a user has no password, so that an unknown
/// user costs as long as a wrong password and the answer's timing tells nothing.
static NOBODY: LazyLock<String> = LazyLock::new(|| {
    let mut random = [0u8; 32];
    rand::rng().fill_bytes(&mut random);
    hash(&hex::encode(random))
});

/// Checks `password` against `stored` (or against nothing, at the same cost) off the async
/// threads.
pub async fn check(password: String, stored: Option<String>) -> bool {
    tokio::task::spawn_blocking(move || match stored {
        Some(stored) => verify(&password, &stored),
        None => {
            let _ = verify(&password, &NOBODY);
            false
        }
    })
    .await
    .unwrap_or(false)
}

/// Refuses passwords that are too short or too long.
pub fn validate(password: &str) -> Result<(), ApiError> {
    let chars = password.chars().count();
    if !(SetPassword::MIN_CHARS..=SetPassword::MAX_CHARS).contains(&chars) {
        return Err(ApiError::invalid(format!(
            "a password has {} to {} characters",
            SetPassword::MIN_CHARS,
            SetPassword::MAX_CHARS
        )));
    }
    Ok(())
}

/// Failed logins per tenant and user: after [`Throttle::FREE`] failures in a row, each further
/// attempt waits [`Throttle::WAIT`] after the last failure. A success forgets the failures.
#[derive(Default)]
pub struct Throttle {
    failures: Mutex<HashMap<(String, String), (u32, Instant)>>,
}

impl Throttle {
    pub const FREE: u32 = 5;
    pub const WAIT: Duration = Duration::from_secs(30);
    /// Beyond this many users with failures, those whose wait is over are forgotten.
    const PRUNE_ABOVE: usize = 10_000;

    /// Refuses the attempt while the user must wait.
    pub fn admit(&self, tenant: &str, user: &str) -> Result<(), ApiError> {
        let failures = self.lock();
        if let Some((count, last)) = failures.get(&(tenant.to_owned(), user.to_owned()))
            && *count >= Self::FREE
            && last.elapsed() < Self::WAIT
        {
            let wait = (Self::WAIT - last.elapsed()).as_secs() + 1;
            return Err(ApiError::new(
                ProblemCode::TooManyAttempts,
                format!("too many failed logins for {user}; try again in {wait} s"),
            ));
        }
        Ok(())
    }

    pub fn failed(&self, tenant: &str, user: &str) {
        let mut failures = self.lock();
        if failures.len() >= Self::PRUNE_ABOVE {
            failures.retain(|_, (_, last)| last.elapsed() < Self::WAIT);
        }
        let entry = failures
            .entry((tenant.to_owned(), user.to_owned()))
            .or_insert((0, Instant::now()));
        entry.0 += 1;
        entry.1 = Instant::now();
    }

    pub fn succeeded(&self, tenant: &str, user: &str) {
        self.lock().remove(&(tenant.to_owned(), user.to_owned()));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), (u32, Instant)>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_salted_argon2id_and_verify_only_their_password() {
        let a = hash("correct horse battery");
        let b = hash("correct horse battery");
        assert!(a.starts_with("$argon2id$"), "{a}");
        assert_ne!(a, b, "salted");
        assert!(!a.contains("correct"));
        assert!(verify("correct horse battery", &a));
        assert!(!verify("correct horse batterY", &a));
        assert!(!verify("correct horse battery", "not a hash"));
    }

    #[test]
    fn passwords_must_have_a_sane_length() {
        assert!(validate("short").is_err());
        assert!(validate(&"x".repeat(SetPassword::MIN_CHARS)).is_ok());
        assert!(validate(&"é".repeat(SetPassword::MAX_CHARS)).is_ok());
        assert!(validate(&"x".repeat(SetPassword::MAX_CHARS + 1)).is_err());
    }

    #[test]
    fn failures_in_a_row_make_a_user_wait_and_a_success_forgets_them() {
        let t = Throttle::default();
        for _ in 0..Throttle::FREE {
            assert!(t.admit("a", "alice").is_ok());
            t.failed("a", "alice");
        }
        let refused = t.admit("a", "alice").unwrap_err();
        assert_eq!(refused.0.code, ProblemCode::TooManyAttempts);
        // Others are not held up.
        assert!(t.admit("a", "bob").is_ok());
        assert!(t.admit("b", "alice").is_ok());
        t.succeeded("a", "alice");
        assert!(t.admit("a", "alice").is_ok());
    }
}
