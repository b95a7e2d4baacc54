//! The bearer token: every mutation needs `Authorization: Bearer <token>`, and every read too
//! when the server listens beyond loopback. Compared in constant time (`subtle`), so the
//! answer's timing does not reveal how much of a guess was right. No cookie is ever set: a
//! page that another site opens cannot send the token, so there is no cross-site request
//! forgery to defend against.

use axum::http::HeaderMap;
use subtle::ConstantTimeEq;

/// The token and the rule for reads.
#[derive(Clone)]
pub struct Auth {
    token: String,
    reads_need_token: bool,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token itself.
        f.debug_struct("Auth")
            .field("reads_need_token", &self.reads_need_token)
            .finish_non_exhaustive()
    }
}

/// What a request is allowed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reading (pages, lists, metrics).
    Read,
    /// Changing something (enqueue, cancel, replay, purge, pause).
    Mutate,
}

impl Auth {
    pub fn new(token: String, reads_need_token: bool) -> Self {
        Auth {
            token,
            reads_need_token,
        }
    }

    /// Whether reads need the token (the server listens beyond loopback).
    pub fn reads_need_token(&self) -> bool {
        self.reads_need_token
    }

    /// Whether the request may do `access`.
    pub fn allows(&self, headers: &HeaderMap, access: Access) -> bool {
        if access == Access::Read && !self.reads_need_token {
            return true;
        }
        let Some(given) = bearer(headers) else {
            return false;
        };
        // `ct_eq` on slices of different lengths is false without comparing contents: the
        // length of the token is the only thing timing can tell.
        bool::from(given.as_bytes().ct_eq(self.token.as_bytes()))
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(axum::http::header::AUTHORIZATION, v.parse().unwrap());
        h
    }

    #[test]
    fn mutations_need_the_exact_token() {
        let auth = Auth::new("s3cr3t-token".into(), false);
        assert!(auth.allows(&HeaderMap::new(), Access::Read));
        assert!(!auth.allows(&HeaderMap::new(), Access::Mutate));
        assert!(auth.allows(&headers("Bearer s3cr3t-token"), Access::Mutate));
        assert!(auth.allows(&headers("bearer s3cr3t-token"), Access::Mutate));
        assert!(!auth.allows(&headers("Bearer s3cr3t-toke"), Access::Mutate));
        assert!(!auth.allows(&headers("Bearer s3cr3t-token2"), Access::Mutate));
        assert!(!auth.allows(&headers("Basic s3cr3t-token"), Access::Mutate));
    }

    #[test]
    fn beyond_loopback_reads_need_it_too() {
        let auth = Auth::new("s3cr3t-token".into(), true);
        assert!(!auth.allows(&HeaderMap::new(), Access::Read));
        assert!(auth.allows(&headers("Bearer s3cr3t-token"), Access::Read));
        assert!(!format!("{auth:?}").contains("s3cr3t"));
    }
}
