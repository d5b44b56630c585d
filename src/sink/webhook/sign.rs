//! Standard Webhooks signing: `whsec_` secrets and the `webhook-signature` header.
//!
//! The signed content is `{webhook-id}.{webhook-timestamp}.{body}`; the signature is
//! `v1,` + base64(HMAC-SHA256(key, content)), where the key is the base64 text after `whsec_`.
//! Several secrets (a rotation in progress) give several signatures, space-separated, as the
//! specification allows; a receiver accepts the request when one of them matches.
//!
//! Invariant: a secret's bytes never reach a `Debug` or `Display` output, and no error
//! message about a secret quotes it.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{KeyInit, Mac};

/// The specification asks for 24 to 64 random bytes (192 to 512 bits).
const MIN_KEY: usize = 24;
const MAX_KEY: usize = 64;

/// One signing key, decoded.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

impl Secret {
    /// `whsec_` + base64 of 24 to 64 bytes. The error says what is wrong, never the text.
    pub(crate) fn parse(text: &str) -> Result<Secret, String> {
        let Some(b64) = text.trim().strip_prefix("whsec_") else {
            return Err("a secret must start with `whsec_` (then base64 of its bytes)".into());
        };
        let key = STANDARD
            .decode(b64)
            .map_err(|_| "a secret must be `whsec_` + base64 (the standard alphabet)")?;
        if !(MIN_KEY..=MAX_KEY).contains(&key.len()) {
            return Err(format!(
                "a secret must hold {MIN_KEY} to {MAX_KEY} bytes, this one has {}",
                key.len()
            ));
        }
        Ok(Secret(key))
    }

    /// Several secrets separated by white space (the first signs, the others keep old
    /// receivers working during a rotation); at least one.
    pub(crate) fn parse_list(text: &str) -> Result<Vec<Secret>, String> {
        let list = text
            .split_whitespace()
            .map(Secret::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if list.is_empty() {
            return Err("the secret is empty".into());
        }
        Ok(list)
    }

    /// `v1,<base64 HMAC-SHA256 over "id.timestamp.body">`.
    pub(crate) fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        // An HMAC takes a key of any length: new_from_slice cannot fail.
        let mut mac = match hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.0) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC accepts keys of any length"),
        };
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

/// The `webhook-signature` value: one signature per secret, space-separated.
pub(crate) fn signature(secrets: &[Secret], id: &str, timestamp: u64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|s| s.sign(id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector published with the Standard Webhooks specification (its reference
    /// libraries test `sign` with exactly these values).
    #[test]
    fn signs_the_published_test_vector() {
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            secret.sign(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn several_secrets_give_several_signatures() {
        let list = Secret::parse_list(
            " whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\twhsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA ",
        )
        .unwrap();
        assert_eq!(list.len(), 2);
        let sig = signature(
            &list,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        let parts: Vec<&str> = sig.split(' ').collect();
        assert_eq!(parts[0], "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert!(parts[1].starts_with("v1,") && parts[1] != parts[0]);
    }

    #[test]
    fn bad_secrets_are_refused_without_being_quoted() {
        for bad in [
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_not base64!",
            "whsec_c2hvcnQ=",
            "whsec_",
            "",
        ] {
            let e = Secret::parse_list(bad).unwrap_err();
            assert!(bad.is_empty() || !e.contains(bad), "{e}");
        }
        assert_eq!(
            format!(
                "{:?}",
                Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap()
            ),
            "Secret(…)"
        );
    }
}
