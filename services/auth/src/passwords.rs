//! Password hashing: argon2id at the OWASP ASVS 5.0 Appendix C floor or above, run on the
//! blocking pool with bounded concurrency so a login flood cannot take every core.

use std::sync::Arc;

use argon2::{Algorithm, Argon2, Params, PasswordHasher, PasswordVerifier, Version};
use tokio::sync::Semaphore;

/// m = 19 MiB, t = 2, p = 1: ASVS 5.0 Appendix C's "t=2 with m ≥ 19 MiB" row. Measured on this
/// project's 2-core machine by `cargo xtask bench auth` (README, "Latest figures").
pub const M_COST_KIB: u32 = 19 * 1024;
pub const T_COST: u32 = 2;
pub const P_COST: u32 = 1;
/// Shortest and longest accepted passwords (NIST 800-63B: at least 8; we ask 12; long
/// passphrases welcome, bounded to keep hashing cost predictable).
pub const MIN_PASSWORD_CHARS: usize = 12;
pub const MAX_PASSWORD_BYTES: usize = 512;

#[derive(Clone)]
pub struct Hasher {
    permits: Arc<Semaphore>,
    /// A real hash of a random password, verified against when the user does not exist, so an
    /// unknown username costs the same time as a wrong password (no enumeration by timing).
    dummy: Arc<str>,
}

fn argon2() -> Argon2<'static> {
    // The constants are valid parameters; `Params::new` only fails on out-of-range values.
    let params = Params::new(M_COST_KIB, T_COST, P_COST, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

fn hash_blocking(password: &[u8]) -> Result<String, String> {
    let salt: [u8; 16] = keel_token::keys::random_bytes().map_err(|e| e.to_string())?;
    argon2()
        .hash_password_with_salt(password, &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

impl Hasher {
    /// `concurrency` hashes at most run at once (others wait their turn).
    pub fn new(concurrency: usize) -> Result<Self, String> {
        let random: [u8; 32] = keel_token::keys::random_bytes().map_err(|e| e.to_string())?;
        Ok(Hasher {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            dummy: hash_blocking(&random)?.into(),
        })
    }

    pub async fn hash(&self, password: String) -> Result<String, String> {
        let _permit = self.permits.acquire().await.map_err(|e| e.to_string())?;
        tokio::task::spawn_blocking(move || hash_blocking(password.as_bytes()))
            .await
            .map_err(|e| e.to_string())?
    }

    /// Verifies `password` against `stored`, or against the dummy hash when `stored` is `None`
    /// (and then returns false). Takes the same time either way.
    pub async fn verify(&self, password: String, stored: Option<String>) -> bool {
        let Ok(_permit) = self.permits.acquire().await else {
            return false;
        };
        let known = stored.is_some();
        let phc = stored.unwrap_or_else(|| self.dummy.to_string());
        let ok = tokio::task::spawn_blocking(move || {
            argon2()
                .verify_password(password.as_bytes(), phc.as_str())
                .is_ok()
        })
        .await
        .unwrap_or(false);
        ok && known
    }
}

/// Password policy for new passwords.
pub fn check_policy(password: &str) -> Result<(), String> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(format!("must be at least {MIN_PASSWORD_CHARS} characters"));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(format!("must be at most {MAX_PASSWORD_BYTES} bytes"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_are_argon2id_at_the_asvs_floor_and_verify() {
        let h = Hasher::new(2).unwrap();
        let phc = h.hash("correct horse battery".into()).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(
            h.verify("correct horse battery".into(), Some(phc.clone()))
                .await
        );
        assert!(!h.verify("wrong horse battery".into(), Some(phc)).await);
        assert!(
            !h.verify("anything".into(), None).await,
            "unknown users never verify"
        );
    }

    #[test]
    fn policy() {
        assert!(check_policy("short").is_err());
        assert!(check_policy("twelve chars").is_ok());
        assert!(check_policy(&"x".repeat(513)).is_err());
    }
}
