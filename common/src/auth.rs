//! Request authentication tokens (DAP-18 "Request Authentication"). A token is accepted both as
//! `DAP-Auth-Token: <token>` and as `Authorization: Bearer <token>`, compared in constant time,
//! and never shown: `Debug` and `Display` print a placeholder.

use http::{header::AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};
use sha2::{Digest, Sha256};
use std::fmt;
use subtle::ConstantTimeEq;

/// The header many DAP deployments (and the interop test API) use for tokens.
pub const DAP_AUTH_TOKEN: HeaderName = HeaderName::from_static("dap-auth-token");

/// How a client presents its token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenScheme {
    #[default]
    Bearer,
    DapAuthToken,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("a token must be 1 to 1024 characters of A-Z a-z 0-9 - . _ ~ + / and trailing =")]
    Malformed,
    #[error("the DAP-Auth-Token and Authorization headers carry different tokens")]
    Conflicting,
    #[error("the Authorization header is not a Bearer token")]
    NotBearer,
}

/// A bearer token. Secret.
#[derive(Clone)]
pub struct AuthenticationToken(String);

impl AuthenticationToken {
    /// A token from its text; the alphabet is RFC 6750's `b64token`, which also fits
    /// `DAP-Auth-Token` header values.
    pub fn new(token: impl Into<String>) -> Result<Self, AuthError> {
        let token = token.into();
        let body = token.trim_end_matches('=');
        let ok = !body.is_empty()
            && token.len() <= 1024
            && body.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b));
        if ok {
            Ok(Self(token))
        } else {
            Err(AuthError::Malformed)
        }
    }

    /// A fresh random token (32 bytes, URL-safe base64).
    pub fn random() -> Self {
        use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
        use rand::Rng;
        let bytes: [u8; 32] = rand::rng().random();
        Self(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// The token's text, for storing it or handing it to an operator. Do not log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Reads the token from a request's headers: `Ok(None)` if there is none, an error if a
    /// header is malformed or the two headers disagree.
    pub fn from_headers(headers: &HeaderMap) -> Result<Option<Self>, AuthError> {
        let dap = headers
            .get(DAP_AUTH_TOKEN)
            .map(|v| v.to_str().map_err(|_| AuthError::Malformed).and_then(|s| Self::new(s.trim())))
            .transpose()?;
        let bearer = headers
            .get(AUTHORIZATION)
            .map(|v| {
                let v = v.to_str().map_err(|_| AuthError::Malformed)?.trim();
                let (scheme, rest) = v.split_once(' ').ok_or(AuthError::NotBearer)?;
                if !scheme.eq_ignore_ascii_case("bearer") {
                    return Err(AuthError::NotBearer);
                }
                Self::new(rest.trim())
            })
            .transpose()?;
        match (dap, bearer) {
            (Some(a), Some(b)) if !a.ct_eq(&b) => Err(AuthError::Conflicting),
            (Some(a), _) => Ok(Some(a)),
            (None, b) => Ok(b),
        }
    }

    /// Constant-time comparison. Comparing SHA-256 digests keeps the token's length from
    /// leaking through timing as well.
    pub fn ct_eq(&self, other: &AuthenticationToken) -> bool {
        let a = Sha256::digest(self.0.as_bytes());
        let b = Sha256::digest(other.0.as_bytes());
        a.as_slice().ct_eq(b.as_slice()).into()
    }

    /// The header a client sends to present this token.
    pub fn header(&self, scheme: TokenScheme) -> (HeaderName, HeaderValue) {
        let (name, value) = match scheme {
            TokenScheme::Bearer => (AUTHORIZATION, format!("Bearer {}", self.0)),
            TokenScheme::DapAuthToken => (DAP_AUTH_TOKEN, self.0.clone()),
        };
        // The alphabet checked in `new` is always a valid header value.
        let mut value = HeaderValue::from_str(&value).expect("token alphabet is header-safe");
        value.set_sensitive(true);
        (name, value)
    }
}

/// The SHA-256 digest of a token: what a server keeps of a token it only checks (the helper of
/// the leader's, the leader of the collector's, both of the admin token), so that a leaked
/// database does not hand the token over. Tokens duet makes hold 32 random bytes, beyond
/// guessing from their digest; a short token an operator chose could be guessed offline.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    pub fn of(token: &AuthenticationToken) -> Self {
        Self(Sha256::digest(token.0.as_bytes()).into())
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Whether `token` is the token digested, in constant time.
    pub fn matches(&self, token: &AuthenticationToken) -> bool {
        Self::of(token).0.as_slice().ct_eq(self.0.as_slice()).into()
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenHash(..)")
    }
}

impl fmt::Debug for AuthenticationToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthenticationToken([redacted])")
    }
}

impl fmt::Display for AuthenticationToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted token]")
    }
}

/// A URL without its password (a database URL, say), for messages and logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_hash_matches_its_token_only() {
        let token = AuthenticationToken::random();
        let hash = TokenHash::of(&token);
        assert!(hash.matches(&token));
        assert!(!hash.matches(&AuthenticationToken::random()));
        assert_eq!(TokenHash::from_bytes(*hash.as_bytes()), hash);
        assert_eq!(hash.as_bytes().as_slice(), Sha256::digest(token.expose().as_bytes()).as_slice());
        assert_eq!(format!("{hash:?}"), "TokenHash(..)");
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn both_headers_accepted() {
        let t = AuthenticationToken::new("s3cr3t-token").unwrap();
        let dap = AuthenticationToken::from_headers(&headers(&[("DAP-Auth-Token", "s3cr3t-token")])).unwrap().unwrap();
        let bearer =
            AuthenticationToken::from_headers(&headers(&[("Authorization", "Bearer s3cr3t-token")])).unwrap().unwrap();
        let lower =
            AuthenticationToken::from_headers(&headers(&[("authorization", "bearer s3cr3t-token")])).unwrap().unwrap();
        assert!(dap.ct_eq(&t) && bearer.ct_eq(&t) && lower.ct_eq(&t));
        assert!(!AuthenticationToken::new("other").unwrap().ct_eq(&t));
        assert!(!AuthenticationToken::new("s3cr3t-tokem").unwrap().ct_eq(&t));
        assert!(AuthenticationToken::from_headers(&HeaderMap::new()).unwrap().is_none());
        for scheme in [TokenScheme::Bearer, TokenScheme::DapAuthToken] {
            let (name, value) = t.header(scheme);
            let mut h = HeaderMap::new();
            h.insert(name, value);
            assert!(AuthenticationToken::from_headers(&h).unwrap().unwrap().ct_eq(&t));
        }
    }

    #[test]
    fn malformed_and_conflicting() {
        assert_eq!(
            AuthenticationToken::from_headers(&headers(&[("Authorization", "Basic abc")])).unwrap_err(),
            AuthError::NotBearer
        );
        assert_eq!(
            AuthenticationToken::from_headers(&headers(&[("DAP-Auth-Token", "a"), ("Authorization", "Bearer b")]))
                .unwrap_err(),
            AuthError::Conflicting
        );
        assert!(AuthenticationToken::new("").is_err());
        assert!(AuthenticationToken::new("has space").is_err());
        assert!(AuthenticationToken::new("===").is_err());
        assert!(AuthenticationToken::new("abc==").is_ok());
    }

    #[test]
    fn never_printed() {
        let t = AuthenticationToken::new("super-secret-value").unwrap();
        assert!(!format!("{t:?}").contains("super-secret"));
        assert!(!format!("{t}").contains("super-secret"));
        assert!(!format!("{:?}", t.header(TokenScheme::Bearer).1).contains("super-secret"));
    }
}
