//! Results tokens: one per Benchmark, derived from an operator key with HMAC-SHA256, so
//! checking a token needs neither an API call nor read access to any Secret.
//!
//! The token binds namespace, name and UID: a Benchmark deleted and created again under
//! the same name gets a new token, and one benchmark's token opens nothing of another's.
//! The key lives in one Secret in the operator's namespace ([`KEY_SECRET`]), created on
//! first start; deleting that Secret (and restarting the operator) rotates every token.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// The Secret holding the operator's token key, in the operator's namespace.
pub const KEY_SECRET: &str = "meshbench-token-key";
/// Key of the key in [`KEY_SECRET`].
const KEY_FIELD: &str = "key";
/// Bytes of a generated key (SHA-256's block is 64; 32 is HMAC-SHA256's recommended).
const KEY_BYTES: usize = 32;

/// Errors of loading the key.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The key Secret could not be read or created.
    #[error("token key Secret {namespace}/{KEY_SECRET}: {source}")]
    Api {
        /// The operator's namespace.
        namespace: String,
        /// The client error.
        source: kube::Error,
    },
    /// The key Secret exists but holds no usable key.
    #[error(
        "token key Secret {namespace}/{KEY_SECRET}: data.{KEY_FIELD} must hold at least {KEY_BYTES} bytes; delete the Secret to have a new key generated"
    )]
    BadKey {
        /// The operator's namespace.
        namespace: String,
    },
    /// The system's random source failed.
    #[error("cannot generate a token key: no system randomness")]
    Random,
}

/// The operator's token key.
#[derive(Clone)]
pub struct TokenKey(hmac::Key);

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

/// What the MAC covers: versioned, NUL-separated (no Kubernetes name contains NUL).
fn message(namespace: &str, name: &str, uid: &str) -> Vec<u8> {
    ["meshbench-results-v1", namespace, name, uid]
        .join("\0")
        .into_bytes()
}

impl TokenKey {
    /// A key from its bytes.
    pub fn new(bytes: &[u8]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, bytes))
    }

    /// A fresh random key and its bytes.
    pub fn generate() -> Result<(Self, Vec<u8>), TokenError> {
        let mut bytes = vec![0u8; KEY_BYTES];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| TokenError::Random)?;
        Ok((Self::new(&bytes), bytes))
    }

    /// The token of Benchmark `namespace/name` with UID `uid`, as hex.
    pub fn token(&self, namespace: &str, name: &str, uid: &str) -> String {
        let tag = hmac::sign(&self.0, &message(namespace, name, uid));
        tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Whether `presented` is that Benchmark's token (compared in constant time).
    pub fn verify(&self, namespace: &str, name: &str, uid: &str, presented: &str) -> bool {
        let Some(tag) = from_hex(presented) else {
            return false;
        };
        hmac::verify(&self.0, &message(namespace, name, uid), &tag).is_ok()
    }

    /// Reads the key from [`KEY_SECRET`] in `namespace`, creating the Secret with a new key
    /// when it does not exist (two replicas starting together agree on whichever was
    /// created first).
    pub async fn load_or_create(client: kube::Client, namespace: &str) -> Result<Self, TokenError> {
        let api: Api<Secret> = Api::namespaced(client, namespace);
        let err = |source| TokenError::Api {
            namespace: namespace.to_string(),
            source,
        };
        for _ in 0..2 {
            if let Some(secret) = api.get_opt(KEY_SECRET).await.map_err(err)? {
                let bytes = secret
                    .data
                    .and_then(|mut d| d.remove(KEY_FIELD))
                    .map(|b| b.0)
                    .filter(|b| b.len() >= KEY_BYTES)
                    .ok_or_else(|| TokenError::BadKey {
                        namespace: namespace.to_string(),
                    })?;
                return Ok(Self::new(&bytes));
            }
            let (key, bytes) = Self::generate()?;
            match api.create(&PostParams::default(), &key_secret(bytes)).await {
                Ok(_) => return Ok(key),
                // Another replica created it first: read theirs.
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => return Err(err(e)),
            }
        }
        Err(TokenError::BadKey {
            namespace: namespace.to_string(),
        })
    }
}

fn key_secret(bytes: Vec<u8>) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(KEY_SECRET.into()),
            labels: Some(BTreeMap::from([(
                super::keys::APP_PART_OF.to_string(),
                "meshbench".to_string(),
            )])),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(KEY_FIELD.to_string(), ByteString(bytes))])),
        type_: Some("Opaque".into()),
        ..Secret::default()
    }
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 128 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_opens_only_its_own_benchmark() {
        let key = TokenKey::new(&[7u8; 32]);
        let t = key.token("ns", "ramp", "uid-1");
        assert_eq!(t.len(), 64);
        assert!(key.verify("ns", "ramp", "uid-1", &t));
        assert!(
            !key.verify("ns", "ramp", "uid-2", &t),
            "recreated benchmark"
        );
        assert!(!key.verify("ns", "other", "uid-1", &t), "other benchmark");
        assert!(!key.verify("other", "ramp", "uid-1", &t), "other namespace");
        // Names cannot be shifted across the separator.
        assert_ne!(key.token("a", "bc", "u"), key.token("ab", "c", "u"));
        let other_key = TokenKey::new(&[8u8; 32]);
        assert!(
            !other_key.verify("ns", "ramp", "uid-1", &t),
            "other operator key"
        );
    }

    #[test]
    fn malformed_tokens_are_refused_without_panicking() {
        let key = TokenKey::new(&[7u8; 32]);
        for bad in ["", "a", "zz", "é1", &"0".repeat(64), &"00".repeat(1000)] {
            assert!(!key.verify("ns", "ramp", "uid", bad), "{bad:?}");
        }
    }
}
