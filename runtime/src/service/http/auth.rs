//! Who may use the service's listener: bearer tokens with scopes, checked
//! in constant time, and the loopback rule (see [`crate::config::HttpConfig`]).
//!
//! A token comes in an `Authorization: Bearer` header or, for what a
//! browser cannot send headers on (`EventSource`, a link), as an
//! `access_token` query parameter (RFC 6750 §2.3), on `GET` only.

use std::net::SocketAddr;

use anyhow::{Result, bail};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::config::{HttpConfig, Scope, TOKEN_ENV};

/// The tokens a service accepts, resolved once at start (and on reload).
#[derive(Clone)]
pub struct Auth {
    /// SHA-256 of each token's value, its name and scopes: comparing
    /// digests of equal length keeps the comparison's time independent of
    /// where a guess first differs.
    tokens: Vec<([u8; 32], String, Vec<Scope>)>,
    /// Scopes of a request without a token.
    open: Vec<Scope>,
}

/// Why a request was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No token, or one that matches none: 401.
    Unauthenticated,
    /// A valid token without the scope: 403.
    Forbidden(Scope),
}

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        match self {
            Denied::Unauthenticated => (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer realm=\"cortex\"")],
                "a bearer token is required (Authorization: Bearer TOKEN); configure one in [http.tokens] or CORTEX_HTTP_TOKEN\n",
            )
                .into_response(),
            Denied::Forbidden(scope) => {
                (StatusCode::FORBIDDEN, format!("this token lacks the {:?} scope\n", scope.name())).into_response()
            }
        }
    }
}

impl Auth {
    /// Resolves the configured tokens (and [`TOKEN_ENV`]) for a listener on
    /// `bind`.
    ///
    /// # Errors
    /// When a `value_env` names an unset or empty variable, or the
    /// listener is not loopback-only and no token is configured.
    pub fn new(config: &HttpConfig, bind: SocketAddr) -> Result<Auth> {
        Auth::with_env(config, bind, |name| std::env::var(name).ok())
    }

    fn with_env(config: &HttpConfig, bind: SocketAddr, env: impl Fn(&str) -> Option<String>) -> Result<Auth> {
        let mut tokens = Vec::new();
        for (name, t) in &config.tokens {
            let value = match (&t.value, &t.value_env) {
                (Some(v), _) => v.clone(),
                (None, Some(var)) => match env(var) {
                    Some(v) if !v.is_empty() => v,
                    _ => bail!(
                        "http.tokens.{name}.value_env: the environment variable {var} is not set (or empty); export it before starting the service"
                    ),
                },
                (None, None) => bail!("http.tokens.{name}: no value"),
            };
            tokens.push((digest(&value), name.clone(), t.scopes.clone()));
        }
        if let Some(v) = env(TOKEN_ENV).filter(|v| !v.is_empty()) {
            tokens.push((digest(&v), TOKEN_ENV.to_string(), Scope::ALL.to_vec()));
        }
        let loopback = bind.ip().is_loopback();
        if !loopback && tokens.is_empty() {
            bail!(
                "refusing to listen on {bind} without a token: anything another host can reach needs one. Set {TOKEN_ENV}, add an [http.tokens.NAME] table, or listen on 127.0.0.1"
            );
        }
        let open = if loopback { config.loopback_scopes.clone() } else { Vec::new() };
        Ok(Auth { tokens, open })
    }

    /// Whether a request may use `scope`; on success, the token's name
    /// (`None` when the loopback rule let it in).
    ///
    /// # Errors
    /// [`Denied`], to be sent back as the response.
    pub fn check(&self, method: &Method, uri: &Uri, headers: &HeaderMap, scope: Scope) -> Result<Option<&str>, Denied> {
        let Some(presented) = presented(method, uri, headers) else {
            return if self.open.contains(&scope) { Ok(None) } else { Err(Denied::Unauthenticated) };
        };
        let presented = digest(&presented);
        // Every token is compared, so the time taken does not say which
        // (or whether one) matched.
        let mut found: Option<usize> = None;
        for (i, (d, ..)) in self.tokens.iter().enumerate() {
            let diff = d.iter().zip(presented.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff == 0 {
                found = Some(i);
            }
        }
        let Some(i) = found else { return Err(Denied::Unauthenticated) };
        let (_, name, scopes) = &self.tokens[i];
        if scopes.contains(&scope) { Ok(Some(name)) } else { Err(Denied::Forbidden(scope)) }
    }
}

fn digest(value: &str) -> [u8; 32] {
    Sha256::digest(value.as_bytes()).into()
}

/// The token a request presents: the `Authorization: Bearer` header, else
/// on a GET an `access_token` query parameter.
fn presented(method: &Method, uri: &Uri, headers: &HeaderMap) -> Option<String> {
    if let Some(h) = headers.get(header::AUTHORIZATION) {
        let h = h.to_str().ok()?;
        let (kind, token) = h.split_once(' ')?;
        return kind.eq_ignore_ascii_case("bearer").then(|| token.trim().to_string());
    }
    if method != Method::GET {
        return None;
    }
    uri.query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == "access_token").then(|| percent_decode(v))
    })
}

/// Decodes a query-string value (`%XX` and `+`).
pub(super) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TokenConfig;

    fn config(loopback: &[Scope], tokens: &[(&str, &str, &[Scope])]) -> HttpConfig {
        HttpConfig {
            loopback_scopes: loopback.to_vec(),
            tokens: tokens
                .iter()
                .map(|(n, v, s)| {
                    (n.to_string(), TokenConfig { value: Some(v.to_string()), value_env: None, scopes: s.to_vec() })
                })
                .collect(),
            ..HttpConfig::default()
        }
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
        h
    }

    const LOOP: &str = "127.0.0.1:9464";
    const ANY: &str = "0.0.0.0:9464";

    #[test]
    fn loopback_opens_only_the_configured_scopes() {
        let auth = Auth::with_env(&config(&[Scope::Read], &[]), LOOP.parse().unwrap(), |_| None).unwrap();
        let uri: Uri = "/api/status".parse().unwrap();
        assert_eq!(auth.check(&Method::GET, &uri, &HeaderMap::new(), Scope::Read), Ok(None));
        assert_eq!(auth.check(&Method::POST, &uri, &HeaderMap::new(), Scope::Ingest), Err(Denied::Unauthenticated));
    }

    #[test]
    fn a_public_listener_needs_a_token_and_never_opens_without_one() {
        let err = Auth::with_env(&config(&[Scope::Read], &[]), ANY.parse().unwrap(), |_| None).err().unwrap();
        assert!(err.to_string().contains("without a token"), "{err}");
        let tokens: &[(&str, &str, &[Scope])] = &[("ops", "0123456789abcdef-ops", &[Scope::Read])];
        let auth = Auth::with_env(&config(&[Scope::Read], tokens), ANY.parse().unwrap(), |_| None).unwrap();
        let uri: Uri = "/metrics".parse().unwrap();
        assert_eq!(auth.check(&Method::GET, &uri, &HeaderMap::new(), Scope::Read), Err(Denied::Unauthenticated));
        assert_eq!(auth.check(&Method::GET, &uri, &bearer("0123456789abcdef-ops"), Scope::Read), Ok(Some("ops")));
        assert_eq!(
            auth.check(&Method::GET, &uri, &bearer("0123456789abcdef-opz"), Scope::Read),
            Err(Denied::Unauthenticated)
        );
        assert_eq!(
            auth.check(&Method::POST, &uri, &bearer("0123456789abcdef-ops"), Scope::Ingest),
            Err(Denied::Forbidden(Scope::Ingest))
        );
    }

    #[test]
    fn tokens_come_from_the_environment_and_a_missing_variable_is_named() {
        let mut c = config(&[], &[]);
        c.tokens.insert(
            "ci".into(),
            TokenConfig { value: None, value_env: Some("CI_TOKEN".into()), scopes: vec![Scope::Ingest] },
        );
        let err = Auth::with_env(&c, LOOP.parse().unwrap(), |_| None).err().unwrap();
        assert!(err.to_string().contains("CI_TOKEN"), "{err}");
        let auth = Auth::with_env(&c, LOOP.parse().unwrap(), |v| match v {
            "CI_TOKEN" => Some("from-the-environment-1".into()),
            TOKEN_ENV => Some("the-all-scopes-token".into()),
            _ => None,
        })
        .unwrap();
        let uri: Uri = "/v1/events".parse().unwrap();
        assert_eq!(auth.check(&Method::POST, &uri, &bearer("from-the-environment-1"), Scope::Ingest), Ok(Some("ci")));
        assert_eq!(auth.check(&Method::POST, &uri, &bearer("the-all-scopes-token"), Scope::Write), Ok(Some(TOKEN_ENV)));
    }

    #[test]
    fn a_query_token_counts_on_get_only() {
        let tokens: &[(&str, &str, &[Scope])] = &[("dash", "a b/c+d%e-0123456789", &Scope::ALL)];
        let auth = Auth::with_env(&config(&[], tokens), ANY.parse().unwrap(), |_| None).unwrap();
        let uri: Uri = "/api/stream?type=worker.*&access_token=a+b%2Fc%2Bd%25e-0123456789".parse().unwrap();
        assert_eq!(auth.check(&Method::GET, &uri, &HeaderMap::new(), Scope::Read), Ok(Some("dash")));
        assert_eq!(auth.check(&Method::POST, &uri, &HeaderMap::new(), Scope::Write), Err(Denied::Unauthenticated));
    }
}
