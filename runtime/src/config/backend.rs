//! The `[backend]` table of `cortex.toml`: where queued events, claims,
//! settlements, dead letters, the archive and handler state are kept (see
//! [`crate::store`]). Absent, they are kept on the filesystem under the
//! coordination root. `url = "redis://host:port/db"` (or `rediss://` for
//! TLS), or the `CORTEX_BACKEND` environment variable, which wins, puts
//! them in Redis under `prefix`, so several hosts (and several roots) share
//! one server.
//!
//! A password is never written into a message or a log line: it comes from
//! the URL (`redis://:secret@host/0`) or, better, from the environment
//! variable `password_env` names, and [`BackendConfig::shown_url`] is the
//! form every message uses.

use super::*;

/// The environment variable that selects the backend, overriding `[backend] url`.
pub const BACKEND_ENV: &str = "CORTEX_BACKEND";

/// `[backend]`: which store to use.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// `redis://[user[:password]@]host[:port][/db]` or `rediss://...`;
    /// absent (and `CORTEX_BACKEND` unset) for the filesystem backend.
    #[serde(default)]
    pub url: Option<String>,
    /// Prepended to every key, `{prefix}:...`, so that several roots share
    /// one server. Defaults to `cortex`.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// The environment variable holding the password, when the URL has none.
    #[serde(default)]
    pub password_env: Option<String>,
    /// How long a handler lease lasts, in ms (Redis only): a handler with
    /// `concurrency = 1` and state runs on one host at a time under a lease
    /// its host renews while it has work (see [`crate::store::lease`]); when
    /// that host dies, another takes the handler over within this time.
    /// Shorter means a faster takeover, more renewals, and a host that
    /// stalls longer than this (GC, swap, a network partition) loses the
    /// handler to another (its late writes are refused and run again).
    #[serde(default = "default_lease_ms")]
    pub lease_ms: u64,
}

fn default_lease_ms() -> u64 {
    5_000
}

fn default_prefix() -> String {
    "cortex".into()
}

impl Default for BackendConfig {
    fn default() -> BackendConfig {
        BackendConfig { url: None, prefix: default_prefix(), password_env: None, lease_ms: default_lease_ms() }
    }
}

/// Which backend a root uses, resolved from the config and the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendKind {
    Filesystem,
    /// A Redis URL with the password filled in from `password_env` (never
    /// print it: use [`BackendConfig::shown_url`]).
    Redis {
        url: String,
        prefix: String,
    },
}

impl BackendConfig {
    /// Only the `[backend]` table of `<root>/cortex.toml`, for the repair
    /// commands (`cortex state`), which must work while another part of the
    /// config is broken.
    ///
    /// # Errors
    /// When the file cannot be read, is not TOML, or the table is invalid.
    pub fn load(root: &Path) -> Result<BackendConfig> {
        let path = root.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!("failed to read {} (run `cortex init --root {}` first?)", path.display(), root.display())
        })?;
        let table: toml::Table = toml::from_str(&text).map_err(|e| {
            anyhow::anyhow!("invalid configuration in {}: {}", path.display(), e.to_string().trim_end())
        })?;
        let backend: BackendConfig = match table.get("backend") {
            Some(v) => v.clone().try_into().map_err(|e: toml::de::Error| {
                anyhow::anyhow!("invalid configuration in {}: backend: {}", path.display(), e.to_string().trim_end())
            })?,
            None => BackendConfig::default(),
        };
        backend.check().with_context(|| format!("invalid configuration in {}", path.display()))?;
        Ok(backend)
    }

    /// The backend to open: `CORTEX_BACKEND` when set and not empty, else
    /// `url`, else the filesystem.
    ///
    /// # Errors
    /// When the URL is not a redis URL, or `password_env` names an unset variable.
    pub fn resolve(&self) -> Result<BackendKind> {
        let from_env = std::env::var(BACKEND_ENV).ok().filter(|v| !v.trim().is_empty());
        let (url, whence) = match (&from_env, &self.url) {
            (Some(u), _) => (u.trim().to_string(), BACKEND_ENV),
            (None, Some(u)) => (u.clone(), "backend.url"),
            (None, None) => return Ok(BackendKind::Filesystem),
        };
        if url == "fs" || url == "filesystem" {
            return Ok(BackendKind::Filesystem);
        }
        check_url(&url).with_context(|| format!("{whence}: {}", shown_redis_url(&url)))?;
        let url = match &self.password_env {
            Some(var) if !has_password(&url) => {
                let password = std::env::var(var).map_err(|_| {
                    anyhow::anyhow!("backend.password_env: the environment variable {var} is not set; export it or remove password_env")
                })?;
                with_password(&url, &password)
            }
            _ => url,
        };
        Ok(BackendKind::Redis { url, prefix: self.prefix.clone() })
    }

    /// Checks what can be checked without the environment.
    ///
    /// # Errors
    /// Naming the key and the fix.
    pub fn check(&self) -> Result<()> {
        if let Some(u) = &self.url {
            check_url(u).with_context(|| format!("backend.url: {}", shown_redis_url(u)))?;
        }
        if self.prefix.is_empty()
            || !self.prefix.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
        {
            bail!("backend.prefix: {:?} must be non-empty ASCII letters, digits, '-', '_', '.' or ':'", self.prefix);
        }
        if !(100..=3_600_000).contains(&self.lease_ms) {
            bail!("backend.lease_ms: {} must be between 100 (0.1 s) and 3600000 (an hour)", self.lease_ms);
        }
        Ok(())
    }
}

/// A Redis URL as messages show it: the password replaced by `***`.
pub fn shown_redis_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return "(not a URL)".into() };
    match rest.split_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => format!("{scheme}://{userinfo}@{host}"),
        },
        None => url.to_string(),
    }
}

fn check_url(url: &str) -> Result<()> {
    let Some((scheme, rest)) = url.split_once("://") else {
        bail!("not a URL; use redis://host:port/db (or rediss:// for TLS)");
    };
    if scheme != "redis" && scheme != "rediss" {
        bail!(
            "unknown backend scheme {scheme:?}; use redis:// or rediss:// (or leave [backend] out for the filesystem)"
        );
    }
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    if host.is_empty() || host.starts_with('/') {
        bail!("no host; use redis://host:port/db");
    }
    Ok(())
}

fn has_password(url: &str) -> bool {
    url.split_once("://").and_then(|(_, r)| r.split_once('@')).is_some_and(|(u, _)| u.contains(':'))
}

/// `url` with `password` in its userinfo, percent-encoded.
fn with_password(url: &str, password: &str) -> String {
    let encoded: String = password
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let (scheme, rest) = url.split_once("://").unwrap_or(("redis", url));
    match rest.split_once('@') {
        Some((user, host)) => format!("{scheme}://{user}:{encoded}@{host}"),
        None => format!("{scheme}://:{encoded}@{rest}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden_and_filled_in() {
        assert_eq!(shown_redis_url("redis://:s3cret@h:6379/2"), "redis://:***@h:6379/2");
        assert_eq!(shown_redis_url("rediss://u:p@h/0"), "rediss://u:***@h/0");
        assert_eq!(shown_redis_url("redis://h:6379"), "redis://h:6379");
        assert_eq!(with_password("redis://h:6379/1", "a b/c"), "redis://:a%20b%2Fc@h:6379/1");
        assert_eq!(with_password("redis://me@h", "x"), "redis://me:x@h");
        assert!(has_password("redis://:x@h") && !has_password("redis://me@h"));
    }

    #[test]
    fn bad_urls_and_prefixes_are_refused() {
        let c = |url: &str, prefix: &str| BackendConfig {
            url: Some(url.into()),
            prefix: prefix.into(),
            password_env: None,
            lease_ms: 5_000,
        };
        assert!(c("redis://127.0.0.1:6379/0", "cortex").check().is_ok());
        assert!(format!("{:#}", c("http://h", "cortex").check().unwrap_err()).contains("unknown backend scheme"));
        assert!(c("redis://", "cortex").check().is_err());
        assert!(c("redis://h", "a b").check().is_err());
        let e = c("redis://:pw@h:1/0", "cortex").check();
        assert!(e.is_ok());
        let lease = |ms| BackendConfig { lease_ms: ms, ..c("redis://h", "cortex") }.check();
        assert!(lease(100).is_ok() && lease(3_600_000).is_ok());
        assert!(format!("{:#}", lease(99).unwrap_err()).contains("backend.lease_ms"));
        assert!(lease(3_600_001).is_err());
    }
}
