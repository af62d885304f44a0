//! JSON state files inside the handler's grants, written atomically, and the
//! list of applied event ids a handler keeps in its state so that a
//! redelivered event (delivery is at-least-once) changes nothing.

use crate::Result;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::Path;

/// How many applied event ids a handler keeps to recognise redeliveries.
pub const RECENT_IDS: usize = 256;

/// Reads a JSON state file, or `T::default()` when it does not exist yet.
///
/// # Errors
/// When it exists but cannot be read or parsed.
pub fn load<T: DeserializeOwned + Default>(path: impl AsRef<Path>) -> Result<T> {
    let path = path.as_ref();
    match std::fs::read(path) {
        Ok(bytes) => {
            Ok(serde_json::from_slice(&bytes).map_err(|e| format!("corrupt state file {}: {e}", path.display()))?)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(format!("cannot read {}: {e}", path.display()).into()),
    }
}

/// Writes a JSON state file atomically: a temp file beside it, then a
/// rename, so a crash never leaves half a state file.
///
/// # Errors
/// When the file cannot be written (e.g. outside the grants).
pub fn save<T: Serialize>(path: impl AsRef<Path>, value: &T) -> Result<()> {
    let path = path.as_ref();
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| format!("state does not serialize: {e}"))?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, bytes).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    Ok(std::fs::rename(&tmp, path).map_err(|e| format!("cannot replace {}: {e}", path.display()))?)
}

/// Whether `id` is among the applied ids kept by [`remember`].
pub fn already_applied(recent: &[String], id: &str) -> bool {
    recent.iter().any(|r| r == id)
}

/// Records `id` as applied, keeping only the last [`RECENT_IDS`].
pub fn remember(recent: &mut Vec<String>, id: &str) {
    if !already_applied(recent, id) {
        recent.push(id.to_string());
    }
    keep_last(recent, RECENT_IDS);
}

/// The summary for a redelivered event that was already applied.
pub fn duplicate_summary(id: &str) -> String {
    format!("duplicate {id}: already applied")
}

/// Drops the oldest items of a history list so at most `cap` remain.
pub fn keep_last<T>(items: &mut Vec<T>, cap: usize) {
    if items.len() > cap {
        items.drain(..items.len() - cap);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remember_keeps_the_last_ids() {
        let mut ids = Vec::new();
        for i in 0..300 {
            remember(&mut ids, &format!("evt_{i}"));
        }
        remember(&mut ids, "evt_299");
        assert_eq!(ids.len(), RECENT_IDS);
        assert!(already_applied(&ids, "evt_299"));
        assert!(already_applied(&ids, "evt_44"));
        assert!(!already_applied(&ids, "evt_43"));
    }

    #[test]
    fn state_files_round_trip_and_default_when_missing() {
        let dir = std::env::temp_dir().join(format!("cortex-sdk-state-{}", std::process::id()));
        let path = dir.join("a/b.json");
        assert_eq!(load::<Vec<u32>>(&path).unwrap(), Vec::<u32>::new());
        save(&path, &vec![1u32, 2]).unwrap();
        assert_eq!(load::<Vec<u32>>(&path).unwrap(), [1, 2]);
        std::fs::write(&path, "{").unwrap();
        let err = load::<Vec<u32>>(&path).unwrap_err();
        assert!(err.is_retryable() && err.message().contains("corrupt state file"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
