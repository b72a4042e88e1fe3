//! Basic auth for every route (exporter-toolkit `basic_auth_users`). bcrypt is slow on purpose, so checks run on
//! the blocking pool, a bounded number at a time; successful checks are remembered so a scraper's repeated
//! requests stay cheap; and an unknown user costs one bcrypt check against a decoy hash, so response time does
//! not reveal which user names exist.

use std::collections::{BTreeMap, HashSet};
use std::hash::{BuildHasher as _, RandomState};
use std::str::FromStr as _;
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use tokio::sync::Semaphore;

/// The challenge sent with every 401.
pub(crate) const CHALLENGE: &str = "Basic realm=\"bms_exporter\"";

/// How many successful checks are remembered; a scraper needs one, so this only bounds memory.
const CACHE_CAPACITY: usize = 256;

/// bcrypt uses at most this many bytes of a password.
const MAX_PASSWORD_BYTES: usize = 72;

/// The configured users and what is needed to check them quickly and evenly.
pub(crate) struct BasicAuth {
    /// User name → bcrypt hash.
    users: BTreeMap<String, String>,
    /// The costliest configured hash, checked for unknown users so they take as long as known ones.
    decoy: String,
    /// Keyed digests of (user, password, hash) that verified; keyed per process so nothing in it can be
    /// precomputed, and holding no password.
    verified: Mutex<HashSet<u128>>,
    digest_key: RandomState,
    /// bcrypt checks in flight are bounded so a flood of wrong passwords cannot take every blocking thread.
    slots: Semaphore,
}

impl BasicAuth {
    /// A checker for `users` (name → bcrypt hash, already validated).
    pub(crate) fn new(users: BTreeMap<String, String>) -> Self {
        let decoy = users
            .values()
            .max_by_key(|h| bcrypt::HashParts::from_str(h).map_or(0, |p| p.get_cost()))
            .cloned()
            .unwrap_or_default();
        let parallel = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        Self {
            users,
            decoy,
            verified: Mutex::new(HashSet::new()),
            digest_key: RandomState::new(),
            slots: Semaphore::new(parallel),
        }
    }

    /// How many users are configured.
    pub(crate) fn user_count(&self) -> usize {
        self.users.len()
    }

    /// Whether an `Authorization` header carries the right password of a configured user.
    pub(crate) async fn allows(&self, authorization: Option<&HeaderValue>) -> bool {
        let Some((user, password)) = authorization.and_then(parse_basic) else {
            return false;
        };
        let (hash, known) = match self.users.get(&user) {
            Some(hash) => (hash.clone(), true),
            None => (self.decoy.clone(), false),
        };
        let digest = self.digest(&user, &password, &hash);
        if known && self.is_verified(digest) {
            return true;
        }
        let Ok(_slot) = self.slots.acquire().await else {
            return false;
        };
        // A password over bcrypt's 72 bytes is refused rather than truncated, as exporter-toolkit's Go bcrypt
        // does, so two long passwords sharing a prefix are not the same password. It still costs a full check.
        let too_long = password.len() > MAX_PASSWORD_BYTES;
        let matches = tokio::task::spawn_blocking(move || bcrypt::verify(&password, &hash).unwrap_or(false))
            .await
            .unwrap_or(false)
            && !too_long;
        if matches && known {
            self.remember(digest);
        }
        matches && known
    }

    fn is_verified(&self, digest: u128) -> bool {
        self.verified.lock().unwrap_or_else(PoisonError::into_inner).contains(&digest)
    }

    /// Remember a success; when full, start over (a scraper re-verifies once) rather than grow.
    fn remember(&self, digest: u128) {
        let mut verified = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        if verified.len() >= CACHE_CAPACITY {
            verified.clear();
        }
        verified.insert(digest);
    }

    /// A 128-bit keyed digest: two SipHash outputs over domain-separated inputs.
    fn digest(&self, user: &str, password: &[u8], hash: &str) -> u128 {
        let half = |domain: u8| self.digest_key.hash_one((domain, user, password, hash));
        (u128::from(half(0)) << 64) | u128::from(half(1))
    }
}

/// The axum middleware: passes the request on when the credentials check out, otherwise answers 401 with the
/// challenge, whatever the path.
pub(crate) async fn require(State(auth): State<Arc<BasicAuth>>, request: Request, next: Next) -> Response {
    if auth.allows(request.headers().get(AUTHORIZATION)).await {
        next.run(request).await
    } else {
        (StatusCode::UNAUTHORIZED, [(WWW_AUTHENTICATE, CHALLENGE)], "Unauthorized\n").into_response()
    }
}

/// `Basic base64(user:password)` → (user, password); anything else → `None`.
fn parse_basic(header: &HeaderValue) -> Option<(String, Vec<u8>)> {
    let text = header.to_str().ok()?;
    let (scheme, credentials) = text.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = decode_base64(credentials.trim())?;
    let colon = decoded.iter().position(|b| *b == b':')?;
    let (user, rest) = decoded.split_at(colon);
    let password = rest.get(1..)?.to_vec();
    Some((String::from_utf8(user.to_vec()).ok()?, password))
}

/// Standard-alphabet base64 (RFC 4648 §4), padding optional; `None` on any other character or an impossible
/// length. Hand-written because it is all basic auth needs from a base64 crate.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let body = text.strip_suffix("==").or_else(|| text.strip_suffix('=')).unwrap_or(text);
    if body.len() % 4 == 1 || (body.len() != text.len() && !text.len().is_multiple_of(4)) {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() / 4 * 3 + 2);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in body.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(user: &str, password: &str) -> HeaderValue {
        HeaderValue::from_str(&format!("Basic {}", encode(format!("{user}:{password}").as_bytes()))).unwrap()
    }

    // Test-only encoder, to round-trip the decoder.
    fn encode(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    fn checker(password: &str) -> BasicAuth {
        BasicAuth::new(BTreeMap::from([("alice".to_owned(), bcrypt::hash(password, 4).unwrap())]))
    }

    #[test]
    fn base64_decodes_the_rfc_4648_vectors() {
        for (plain, coded) in
            [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE=")]
        {
            assert_eq!(decode_base64(coded).unwrap(), plain.as_bytes(), "{coded}");
            assert_eq!(encode(plain.as_bytes()), coded);
        }
        assert_eq!(decode_base64("Zm9vYg").unwrap(), b"foob", "padding is optional");
        for bad in ["Zm9v!", "Z", "Zg=", "Zm9vY===", "Zm 9v"] {
            assert_eq!(decode_base64(bad), None, "{bad}");
        }
    }

    #[test]
    fn basic_credentials_split_at_the_first_colon() {
        assert_eq!(parse_basic(&header("alice", "a:b")), Some(("alice".to_owned(), b"a:b".to_vec())));
        let lower = HeaderValue::from_str(&format!("basic {}", encode(b"u:p"))).unwrap();
        assert_eq!(parse_basic(&lower), Some(("u".to_owned(), b"p".to_vec())));
        assert_eq!(parse_basic(&HeaderValue::from_static("Bearer abc")), None);
        assert_eq!(parse_basic(&HeaderValue::from_str(&format!("Basic {}", encode(b"nocolon"))).unwrap()), None);
    }

    #[tokio::test]
    async fn the_right_password_passes_and_others_do_not() {
        let auth = checker("s3cret");
        assert!(auth.allows(Some(&header("alice", "s3cret"))).await);
        assert!(!auth.allows(Some(&header("alice", "wrong"))).await);
        assert!(!auth.allows(Some(&header("bob", "s3cret"))).await, "unknown user, checked against the decoy");
        assert!(!auth.allows(None).await);
    }

    #[tokio::test]
    async fn only_successes_are_cached() {
        let auth = checker("s3cret");
        assert!(!auth.allows(Some(&header("alice", "nope"))).await);
        assert!(auth.verified.lock().unwrap().is_empty());
        assert!(auth.allows(Some(&header("alice", "s3cret"))).await);
        assert!(auth.is_verified(auth.digest("alice", b"s3cret", &auth.users["alice"])));
        assert_eq!(auth.verified.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_cached_success_is_answered_without_bcrypt() {
        // The stored hash is of another password, so only the cache can let "pw" in: proof it is consulted
        // before bcrypt.
        let auth = checker("something else");
        auth.remember(auth.digest("alice", b"pw", &auth.users["alice"]));
        assert!(auth.allows(Some(&header("alice", "pw"))).await);
        // The digest covers the stored hash, so an entry made for one hash never matches another.
        assert_ne!(auth.digest("alice", b"pw", "other"), auth.digest("alice", b"pw", &auth.users["alice"]));
        assert_ne!(auth.digest("alice", b"pw", "h"), auth.digest("alic", b"epw", "h"));
    }

    #[test]
    fn the_cache_stays_bounded() {
        let auth = checker("x");
        for i in 0..3 * CACHE_CAPACITY {
            auth.remember(i as u128);
            assert!(auth.verified.lock().unwrap().len() <= CACHE_CAPACITY);
        }
    }

    #[test]
    fn the_decoy_is_the_costliest_configured_hash() {
        let auth = BasicAuth::new(BTreeMap::from([
            ("a".to_owned(), bcrypt::hash("x", 4).unwrap()),
            ("b".to_owned(), bcrypt::hash("y", 6).unwrap()),
        ]));
        assert!(auth.decoy.starts_with("$2b$06$"), "{}", auth.decoy);
    }

    #[tokio::test]
    async fn passwords_longer_than_bcrypt_takes_are_refused_not_truncated() {
        let exactly_72 = "x".repeat(72);
        let auth = checker(&exactly_72);
        assert!(auth.allows(Some(&header("alice", &exactly_72))).await);
        assert!(!auth.allows(Some(&header("alice", &format!("{exactly_72}y")))).await);
    }
}
