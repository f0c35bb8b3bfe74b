//! Private keys at rest: AES-256-GCM under the deployment's master key, with the key's `kid`
//! and tenant as associated data (a sealed secret moved to another row does not open).

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;

const NONCE_LEN: usize = 12;

#[derive(Clone)]
pub struct Sealer {
    cipher: Aes256Gcm,
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("master key must be 32 bytes of standard base64")]
    BadMasterKey,
    #[error("sealed secret does not open with this master key")]
    Open,
    #[error("random source failed")]
    Random,
}

impl Sealer {
    /// From `KEEL_AUTH_MASTER_KEY`: 32 random bytes, standard base64.
    pub fn from_base64(b64: &str) -> Result<Self, SealError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|_| SealError::BadMasterKey)?;
        let cipher = Aes256Gcm::new_from_slice(&bytes).map_err(|_| SealError::BadMasterKey)?;
        if bytes.len() != 32 {
            return Err(SealError::BadMasterKey);
        }
        Ok(Sealer { cipher })
    }

    pub fn seal(&self, secret: &[u8], aad: &[u8]) -> Result<Vec<u8>, SealError> {
        let nonce: [u8; NONCE_LEN] =
            keel_token::keys::random_bytes().map_err(|_| SealError::Random)?;
        let mut out = nonce.to_vec();
        let ct = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: secret, aad })
            .map_err(|_| SealError::Random)?;
        out.extend_from_slice(&ct);
        Ok(out)
    }

    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, SealError> {
        if sealed.len() < NONCE_LEN {
            return Err(SealError::Open);
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        self.cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
            .map_err(|_| SealError::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> String {
        base64::engine::general_purpose::STANDARD.encode([7u8; 32])
    }

    #[test]
    fn seals_and_binds_to_its_record() {
        let s = Sealer::from_base64(&key()).unwrap();
        let sealed = s.seal(b"secret seed", b"kid1|acme").unwrap();
        assert!(!sealed.windows(11).any(|w| w == b"secret seed"));
        assert_eq!(s.open(&sealed, b"kid1|acme").unwrap(), b"secret seed");
        assert!(
            s.open(&sealed, b"kid2|acme").is_err(),
            "moved to another row"
        );
        let other =
            Sealer::from_base64(&base64::engine::general_purpose::STANDARD.encode([8u8; 32]))
                .unwrap();
        assert!(
            other.open(&sealed, b"kid1|acme").is_err(),
            "another master key"
        );
        assert!(Sealer::from_base64("c2hvcnQ=").is_err());
        assert!(Sealer::from_base64("not base64!").is_err());
    }
}
