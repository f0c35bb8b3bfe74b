//! TOTP (RFC 6238 over RFC 4226 HOTP): codes, the accepted window (the current and the previous
//! 30-second step only), `otpauth://` URIs and base32 secrets. Replay protection (each step
//! accepted once) lives with the stored credential, in [`crate::mfa`].

use hmac::{Hmac, KeyInit, Mac};

/// RFC 6238 §4: X = 30 seconds, T0 = 0.
pub const STEP_SECS: i64 = 30;
pub const DIGITS: u32 = 6;
/// Secret length: 160 bits, RFC 4226 §4's recommendation for HMAC-SHA1.
pub const SECRET_BYTES: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    Sha1,
    Sha256,
    Sha512,
}

fn mac(alg: Alg, key: &[u8], msg: &[u8]) -> Vec<u8> {
    fn run<M: Mac + KeyInit>(key: &[u8], msg: &[u8]) -> Vec<u8> {
        // HMAC accepts keys of any length.
        let Ok(mut m) = <M as KeyInit>::new_from_slice(key) else {
            return Vec::new();
        };
        m.update(msg);
        m.finalize().into_bytes().to_vec()
    }
    match alg {
        Alg::Sha1 => run::<Hmac<sha1::Sha1>>(key, msg),
        Alg::Sha256 => run::<Hmac<sha2::Sha256>>(key, msg),
        Alg::Sha512 => run::<Hmac<sha2::Sha512>>(key, msg),
    }
}

/// RFC 4226 §5.3: dynamic truncation of HMAC(key, counter) to `digits` decimal digits.
pub fn hotp(alg: Alg, key: &[u8], counter: u64, digits: u32) -> u32 {
    let h = mac(alg, key, &counter.to_be_bytes());
    let Some(last) = h.last() else { return 0 };
    let off = usize::from(last & 0x0f);
    let bin = (u32::from(h[off] & 0x7f) << 24)
        | (u32::from(h[off + 1]) << 16)
        | (u32::from(h[off + 2]) << 8)
        | u32::from(h[off + 3]);
    bin % 10u32.pow(digits)
}

pub fn step_at(unix: i64) -> i64 {
    unix.div_euclid(STEP_SECS)
}

pub fn code(alg: Alg, key: &[u8], step: i64, digits: u32) -> String {
    format!(
        "{:0width$}",
        hotp(alg, key, step.max(0) as u64, digits),
        width = digits as usize
    )
}

/// The step `candidate` is valid for at `now`: the current step or the previous one only
/// (RFC 6238 §5.2's one step of network delay). Compared in constant time.
pub fn matching_step(key: &[u8], candidate: &str, now: i64) -> Option<i64> {
    use subtle::ConstantTimeEq;
    if candidate.len() != DIGITS as usize || !candidate.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let current = step_at(now);
    let mut found = None;
    for step in [current, current - 1] {
        let expected = code(Alg::Sha1, key, step, DIGITS);
        if bool::from(expected.as_bytes().ct_eq(candidate.as_bytes())) && found.is_none() {
            found = Some(step);
        }
    }
    found
}

/// RFC 4648 base32 without padding (what authenticator apps expect in `secret=`).
pub fn base32(bytes: &[u8]) -> String {
    const A: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let (mut buf, mut bits) = (0u32, 0u32);
    for b in bytes {
        buf = (buf << 8) | u32::from(*b);
        bits += 8;
        while bits >= 5 {
            out.push(A[((buf >> (bits - 5)) & 31) as usize] as char);
            bits -= 5;
        }
    }
    if bits > 0 {
        out.push(A[((buf << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// Decodes RFC 4648 base32 (case-insensitive, padding optional); `None` on any other character.
pub fn base32_decode(s: &str) -> Option<Vec<u8>> {
    let (mut buf, mut bits, mut out) = (0u32, 0u32, Vec::new());
    for c in s.trim_end_matches('=').bytes() {
        let v = match c.to_ascii_uppercase() {
            c @ b'A'..=b'Z' => c - b'A',
            c @ b'2'..=b'7' => c - b'2' + 26,
            _ => return None,
        };
        buf = (buf << 5) | u32::from(v);
        bits += 5;
        if bits >= 8 {
            out.push((buf >> (bits - 8)) as u8);
            bits -= 8;
        }
    }
    Some(out)
}

fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The enrolment URI authenticator apps scan (Key Uri Format).
pub fn otpauth_uri(issuer: &str, account: &str, secret: &[u8]) -> String {
    format!(
        "otpauth://totp/{}:{}?secret={}&issuer={}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECS}",
        pct(issuer),
        pct(account),
        base32(secret),
        pct(issuer)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 Appendix B, all three algorithms, 8 digits.
    #[test]
    fn rfc_6238_appendix_b_vectors() {
        let k1 = b"12345678901234567890";
        let k256 = b"12345678901234567890123456789012";
        let k512 = b"1234567890123456789012345678901234567890123456789012345678901234";
        let rows: [(i64, &str, &str, &str); 6] = [
            (59, "94287082", "46119246", "90693936"),
            (1_111_111_109, "07081804", "68084774", "25091201"),
            (1_111_111_111, "14050471", "67062674", "99943326"),
            (1_234_567_890, "89005924", "91819424", "93441116"),
            (2_000_000_000, "69279037", "90698825", "38618901"),
            (20_000_000_000, "65353130", "77737706", "47863826"),
        ];
        for (t, sha1, sha256, sha512) in rows {
            let s = step_at(t);
            assert_eq!(code(Alg::Sha1, k1, s, 8), sha1, "SHA1 T={t}");
            assert_eq!(code(Alg::Sha256, k256, s, 8), sha256, "SHA256 T={t}");
            assert_eq!(code(Alg::Sha512, k512, s, 8), sha512, "SHA512 T={t}");
        }
    }

    /// RFC 4226 Appendix D.
    #[test]
    fn rfc_4226_hotp_vectors() {
        let expected = [
            755224, 287082, 359152, 969429, 338314, 254676, 287922, 162583, 399871, 520489,
        ];
        for (c, e) in expected.iter().enumerate() {
            assert_eq!(hotp(Alg::Sha1, b"12345678901234567890", c as u64, 6), *e);
        }
    }

    #[test]
    fn only_the_current_and_previous_step_are_accepted() {
        let key = b"12345678901234567890";
        let now = 1_800_000_015;
        let s = step_at(now);
        assert_eq!(
            matching_step(key, &code(Alg::Sha1, key, s, 6), now),
            Some(s)
        );
        assert_eq!(
            matching_step(key, &code(Alg::Sha1, key, s - 1, 6), now),
            Some(s - 1)
        );
        assert_eq!(
            matching_step(key, &code(Alg::Sha1, key, s - 2, 6), now),
            None
        );
        assert_eq!(
            matching_step(key, &code(Alg::Sha1, key, s + 1, 6), now),
            None
        );
        for bad in ["", "12345", "1234567", "12345a", " 12345"] {
            assert_eq!(matching_step(key, bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn base32_and_uri() {
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
        assert_eq!(
            base32(b"12345678901234567890"),
            "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"
        );
        let uri = otpauth_uri("keel acme", "alice@acme", b"12345678901234567890");
        assert_eq!(
            uri,
            "otpauth://totp/keel%20acme:alice%40acme?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=keel%20acme&algorithm=SHA1&digits=6&period=30"
        );
    }
}
