//! Bearer-token authentication: when the server has a token, every API request must carry it in
//! `Authorization: Bearer TOKEN` (or, for the dashboard's event streams, which cannot set
//! headers, in the `crunch_token` cookie the dashboard sets). Compared in constant time.

use crate::error::ApiError;
use crate::AppState;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

/// The cookie the dashboard keeps the token in.
pub const COOKIE: &str = "crunch_token";

fn presented(req: &Request) -> Option<String> {
    let h = req.headers();
    if let Some(v) = h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let (scheme, token) = v.trim().split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_string());
    }
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('=').map(percent_decode))
}

/// `%XX` escapes decoded (the dashboard stores the token with `encodeURIComponent`).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (b[i], b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `given` is `expected`, taking the same time for every `given` of the same length.
pub fn token_matches(given: &str, expected: &str) -> bool {
    given.as_bytes().ct_eq(expected.as_bytes()).into()
}

/// Middleware: `401` unless the request carries the server's token (when it has one).
pub async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Result<Response, ApiError> {
    let cfg = &state.inner().config;
    let Some(expected) = cfg.token.as_deref() else {
        if cfg.require_token {
            return Err(ApiError::new(StatusCode::UNAUTHORIZED, "this server has no token configured"));
        }
        return Ok(next.run(req).await);
    };
    match presented(&req) {
        Some(t) if token_matches(&t, expected) => Ok(next.run(req).await),
        Some(_) => Err(ApiError::new(StatusCode::UNAUTHORIZED, "wrong bearer token")),
        None => Err(ApiError::new(StatusCode::UNAUTHORIZED, "this server needs `Authorization: Bearer TOKEN`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(token_matches("s3cret", "s3cret"));
        assert!(!token_matches("s3cre", "s3cret"));
        assert!(!token_matches("s3cret!", "s3cret"));
        assert!(!token_matches("", "s3cret"));
    }

    #[test]
    fn token_from_header_or_cookie() {
        let r = Request::builder().header("authorization", "Bearer abc").body(axum::body::Body::empty()).unwrap();
        assert_eq!(presented(&r).as_deref(), Some("abc"));
        let r = Request::builder().header("cookie", "a=1; crunch_token=xyz").body(axum::body::Body::empty()).unwrap();
        assert_eq!(presented(&r).as_deref(), Some("xyz"));
        let r = Request::builder().header("cookie", "crunch_token=a%2Bb%3D").body(axum::body::Body::empty()).unwrap();
        assert_eq!(presented(&r).as_deref(), Some("a+b="));
        let r = Request::builder().header("authorization", "Basic abc").body(axum::body::Body::empty()).unwrap();
        assert_eq!(presented(&r), None);
    }
}
