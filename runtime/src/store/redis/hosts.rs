//! Which services run on a Redis root, seen from any host: each `cortex
//! serve` keeps a key `{prefix}:host:{hostname}:{pid}` alive (set again
//! every [`EVERY`] with a time to live of [`TTL`]) and deletes it when it
//! stops. A service killed without a chance to delete its key drops out
//! of the list within [`TTL`]. `cortex state set/delete` reads the list to
//! refuse a repair while any host serves the root, not only this one.

use std::time::Duration;

use anyhow::Result;

use super::{Budget, Redis};

/// How often a service says it is alive.
pub const EVERY: Duration = Duration::from_secs(5);
/// How long a service that stopped saying so is still listed.
pub const TTL: Duration = Duration::from_secs(15);

/// This process, as it is listed: `hostname:pid`.
pub fn this_process() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into `buf`.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    let host = if ok { String::from_utf8_lossy(&buf[..end]).into_owned() } else { "unknown-host".into() };
    format!("{host}:{}", std::process::id())
}

/// Lists `who` as serving for [`TTL`] from now.
///
/// # Errors
/// When the server does not answer at once.
pub fn announce(server: &Redis, who: &str) -> Result<()> {
    let key = server.key(&format!("host:{who}"));
    server.run("say this service is alive", Budget::Once, |c| {
        redis::cmd("SET").arg(&key).arg(chrono::Utc::now().to_rfc3339()).arg("PX").arg(TTL.as_millis() as u64).exec(c)
    })
}

/// Takes `who` off the list (a graceful stop).
///
/// # Errors
/// When the server does not answer at once.
pub fn withdraw(server: &Redis, who: &str) -> Result<()> {
    let key = server.key(&format!("host:{who}"));
    server.run("take this service off the list", Budget::Once, |c| redis::cmd("DEL").arg(&key).exec(c))
}

/// The services listed as serving, `hostname:pid` each, sorted.
///
/// # Errors
/// When the server cannot be read.
pub fn listed(server: &Redis) -> Result<Vec<String>> {
    let pattern = server.key("host:*");
    let strip = server.key("host:");
    let keys: Vec<String> = server.run("list the services on this root", Budget::Once, |c| {
        let mut out = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, batch): (u64, Vec<String>) =
                redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(1000).query(c)?;
            out.extend(batch);
            if next == 0 {
                return Ok(out);
            }
            cursor = next;
        }
    })?;
    let mut names: Vec<String> = keys.iter().filter_map(|k| k.strip_prefix(&strip)).map(str::to_string).collect();
    names.sort();
    Ok(names)
}
