//! The `[http]` table of `cortex.toml`: who may use the service's listener.
//! Checked as part of [`super::Config`]; enforced by `service::http::auth`.
//!
//! Every request but the probes (`/healthz`, `/readyz`) needs a scope:
//! `read` (metrics, dashboard, JSON APIs), `ingest` (`POST /v1/events`) or
//! `write` (repairs from the dashboard, such as a dead-letter retry). A
//! bearer token grants the scopes its table lists. Without a token, a
//! request gets `loopback_scopes` when the service listens on a loopback
//! address only, and nothing otherwise: a non-loopback listener refuses to
//! start unless a token is configured.

use super::*;

/// What a request may do.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Metrics, the dashboard and the read-only JSON APIs.
    Read,
    /// Queue events over HTTP.
    Ingest,
    /// Change the root from the dashboard (e.g. retry a dead letter).
    Write,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Read, Scope::Ingest, Scope::Write];

    pub fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Ingest => "ingest",
            Scope::Write => "write",
        }
    }
}

/// The environment variable whose value, when set, is one more bearer
/// token with every scope (for a deployment that keeps secrets out of files).
pub const TOKEN_ENV: &str = "CORTEX_HTTP_TOKEN";

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Scopes a request without a token gets while the listener is bound to
    /// a loopback address only. Default `["read"]`: the dashboard and
    /// metrics open locally, ingest and writes need a token.
    #[serde(default = "default_loopback_scopes")]
    pub loopback_scopes: Vec<Scope>,
    /// Bearer tokens by name (the name appears in logs, the value never).
    #[serde(default)]
    pub tokens: BTreeMap<String, TokenConfig>,
    /// The largest request body `POST /v1/events` reads (a batch); a
    /// larger one is answered 413. Each event is also held to
    /// `limits.max_event_bytes`. Default 4 MiB.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            loopback_scopes: default_loopback_scopes(),
            tokens: BTreeMap::new(),
            max_body_bytes: default_max_body_bytes(),
        }
    }
}

fn default_max_body_bytes() -> usize {
    4 << 20
}

fn default_loopback_scopes() -> Vec<Scope> {
    vec![Scope::Read]
}

/// `[http.tokens.NAME]`: one bearer token, given literally (`value`) or
/// read from the environment at start (`value_env`), and what it may do.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_env: Option<String>,
    pub scopes: Vec<Scope>,
}

/// Tokens shorter than this are refused: a bearer token is a password.
pub const MIN_TOKEN_LEN: usize = 16;

impl HttpConfig {
    /// # Errors
    /// Naming the token table and what is wrong with it.
    pub fn check(&self) -> Result<()> {
        if self.max_body_bytes < 256 {
            bail!("http.max_body_bytes: {} is too small to hold an event (use at least 256)", self.max_body_bytes);
        }
        for (name, t) in &self.tokens {
            if !event::is_valid_handler_name(name) {
                bail!("http.tokens.{name}: a token name is letters, digits, '-' and '_'");
            }
            match (&t.value, &t.value_env) {
                (Some(_), Some(_)) | (None, None) => {
                    bail!(
                        "http.tokens.{name}: give exactly one of `value` or `value_env` (an environment variable's name)"
                    )
                }
                (Some(v), None) if v.len() < MIN_TOKEN_LEN => {
                    bail!("http.tokens.{name}.value: a token must be at least {MIN_TOKEN_LEN} characters")
                }
                _ => {}
            }
            if t.scopes.is_empty() {
                bail!("http.tokens.{name}.scopes: list at least one of \"read\", \"ingest\", \"write\"");
            }
        }
        Ok(())
    }
}
