//! `[webhooks.NAME]`: the outbound webhook endpoints of `cortex.toml`, and
//! their checks. The host delivers matching events to them (see
//! [`crate::webhooks`]); handlers keep no network access.
//!
//! The secret is never in the file: `secret_env` names the environment
//! variable that holds it, read when `cortex serve` starts or reloads
//! ([`WebhookConfig::secret`]).

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use crate::webhooks::sign::Secret;

/// What a delivery's body is.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    /// The event as a structured-mode CloudEvent
    /// (`application/cloudevents+json`).
    #[default]
    Cloudevents,
    /// The event's payload as-is (`application/json`): for receivers with
    /// a body of their own, such as a Slack incoming webhook, which takes
    /// `{"text": ..., "blocks": ...}`.
    Data,
}

/// `[webhooks.NAME]`: one endpoint.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://` or `https://`.
    pub url: String,
    /// Event type globs delivered to it (`notification.*`, `task.failed`).
    pub events: Vec<String>,
    /// The environment variable holding the signing secret (`whsec_<base64>`
    /// or any text); without it deliveries are not signed.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// One attempt's deadline, connect to the end of the response.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Attempts before the delivery becomes a dead letter.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Deliveries in flight to this endpoint at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    #[serde(default)]
    pub format: WebhookFormat,
    /// The first retry waits up to this long; each further one twice as
    /// long (full jitter), up to `max_backoff_ms`.
    #[serde(default = "default_backoff_ms")]
    pub backoff_ms: u64,
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// Consecutive failures that open the circuit breaker.
    #[serde(default = "default_breaker_failures")]
    pub breaker_failures: u32,
    /// How long an open breaker waits before one probe delivery.
    #[serde(default = "default_breaker_cooldown_ms")]
    pub breaker_cooldown_ms: u64,
}

fn default_timeout_ms() -> u64 {
    10_000
}
fn default_max_attempts() -> u32 {
    8
}
fn default_concurrency() -> usize {
    4
}
fn default_backoff_ms() -> u64 {
    1_000
}
fn default_max_backoff_ms() -> u64 {
    300_000
}
fn default_breaker_failures() -> u32 {
    5
}
fn default_breaker_cooldown_ms() -> u64 {
    30_000
}

impl WebhookConfig {
    /// Checks one endpoint; `name` is its table name.
    ///
    /// # Errors
    /// Naming the key and what to write instead.
    pub fn check(&self, name: &str) -> Result<()> {
        if !crate::event::is_valid_handler_name(name) {
            bail!("webhooks.{name}: an endpoint name is letters, digits, '-' and '_'");
        }
        match reqwest::Url::parse(&self.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {}
            Ok(_) => bail!("webhooks.{name}.url: must be an http:// or https:// URL with a host"),
            Err(e) => bail!("webhooks.{name}.url: not a URL ({e}); write e.g. https://hooks.example.com/cortex"),
        }
        if self.events.is_empty() {
            bail!("webhooks.{name}.events: list at least one event type pattern (e.g. notification.*)");
        }
        for p in &self.events {
            if !crate::pattern::is_type_pattern(p) {
                bail!(
                    "webhooks.{name}.events: {p:?} is not an event type or glob (e.g. notification.* or task.failed)"
                );
            }
        }
        if let Some(var) = &self.secret_env
            && (var.is_empty()
                || var.starts_with(|c: char| c.is_ascii_digit())
                || !var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        {
            bail!(
                "webhooks.{name}.secret_env: {var:?} is not an environment variable name (e.g. SLACK_WEBHOOK_SECRET)"
            );
        }
        for (key, v) in [
            ("timeout_ms", self.timeout_ms),
            ("max_attempts", u64::from(self.max_attempts)),
            ("concurrency", self.concurrency as u64),
            ("backoff_ms", self.backoff_ms),
            ("breaker_failures", u64::from(self.breaker_failures)),
        ] {
            if v == 0 {
                bail!("webhooks.{name}.{key}: must be at least 1");
            }
        }
        if self.concurrency > 256 {
            bail!("webhooks.{name}.concurrency: {} is more than 256", self.concurrency);
        }
        if self.max_backoff_ms < self.backoff_ms {
            bail!("webhooks.{name}.max_backoff_ms: must be at least backoff_ms ({})", self.backoff_ms);
        }
        Ok(())
    }

    /// The signing secret from the environment, or `None` when the
    /// endpoint names no `secret_env`.
    ///
    /// # Errors
    /// When the variable is unset or not a usable secret; the message names
    /// the variable, never its value.
    pub fn secret(&self, name: &str) -> Result<Option<Secret>> {
        let Some(var) = &self.secret_env else { return Ok(None) };
        let Some(text) = std::env::var_os(var) else {
            bail!(
                "webhooks.{name}.secret_env: the environment variable {var} is not set; export it (whsec_<base64> or any text) before starting cortex serve, or remove secret_env to send unsigned"
            );
        };
        let text = text.into_string().map_err(|_| anyhow::anyhow!("webhooks.{name}.secret_env: {var} is not UTF-8"))?;
        Secret::parse(&text).map(Some).map_err(|e| anyhow::anyhow!("webhooks.{name}.secret_env: {var}: {e}"))
    }

    /// The URL as logs and `cortex status` show it: scheme, host and port
    /// only. Userinfo and query may hold credentials, and so may the path
    /// (a Slack incoming webhook's token is its path).
    pub fn shown_url(&self) -> String {
        shown_url(&self.url)
    }
}

/// See [`WebhookConfig::shown_url`].
pub fn shown_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => {
            let port = u.port().map_or(String::new(), |p| format!(":{p}"));
            let path = if u.path() == "/" && u.query().is_none() { "/" } else { "/…" };
            format!("{}://{}{port}{path}", u.scheme(), u.host_str().unwrap_or("?"))
        }
        Err(_) => "(invalid url)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<WebhookConfig> {
        let c: WebhookConfig = toml::from_str(text)?;
        c.check("slack")?;
        Ok(c)
    }

    #[test]
    fn defaults_and_checks() {
        let c = parse("url = \"https://hooks.slack.com/services/T/B/X\"\nevents = [\"notification.*\"]").unwrap();
        assert_eq!((c.max_attempts, c.concurrency, c.format), (8, 4, WebhookFormat::Cloudevents));
        assert_eq!(c.shown_url(), "https://hooks.slack.com/…");
        assert!(parse("url = \"ftp://x\"\nevents = [\"a\"]").unwrap_err().to_string().contains("http"));
        assert!(parse("url = \"nope\"\nevents = [\"a\"]").unwrap_err().to_string().contains("not a URL"));
        assert!(parse("url = \"http://x\"\nevents = []").is_err());
        assert!(parse("url = \"http://x\"\nevents = [\"Bad Glob\"]").unwrap_err().to_string().contains("glob"));
        assert!(parse("url = \"http://x\"\nevents = [\"a\"]\nsecret_env = \"1X\"").is_err());
        assert!(parse("url = \"http://x\"\nevents = [\"a\"]\nmax_attempts = 0").is_err());
        assert!(parse("url = \"http://x\"\nevents = [\"a\"]\nformat = \"xml\"").is_err());
        assert!(parse("url = \"http://x\"\nevents = [\"a\"]\nurl_typo = 1").is_err());
        let data = parse("url = \"http://u:p@127.0.0.1:9/x?k=s\"\nevents = [\"a\"]\nformat = \"data\"").unwrap();
        assert_eq!((data.format, data.shown_url().as_str()), (WebhookFormat::Data, "http://127.0.0.1:9/…"));
    }

    #[test]
    fn a_missing_secret_variable_is_named_and_never_its_value() {
        let c =
            parse("url = \"http://x\"\nevents = [\"a\"]\nsecret_env = \"CORTEX_TEST_SURELY_UNSET_SECRET\"").unwrap();
        let e = c.secret("slack").unwrap_err().to_string();
        assert!(e.contains("CORTEX_TEST_SURELY_UNSET_SECRET is not set"), "{e}");
        assert!(parse("url = \"http://x\"\nevents = [\"a\"]").unwrap().secret("slack").unwrap().is_none());
    }
}
