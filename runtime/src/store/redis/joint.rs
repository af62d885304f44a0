//! Settlement and handler state in one script (issue 13): when the
//! dispatcher's state backend is this store's own ([`RedisStore::joins`]:
//! same server, same prefix), a batch's key-value buffers and its
//! settlements are ONE `joint.lua` call, made of `kv/commit.lua` and
//! `scripts/settle.lua` as two Lua functions: the buffers are checked and
//! applied first, then each event is settled, with its re-run settlement
//! instead when a buffer of it was refused. Redis runs a script whole, so
//! there is no moment where an event's writes are applied and the event is
//! not settled (or the reverse), and one call replaces two.
//!
//! Repeated after a lost reply, the call changes nothing more: the applied
//! buffers find their marks, the settled entries' `XACK`s ack nothing.

use std::sync::{Arc, LazyLock};

use anyhow::{Context, Result};

use super::queue::{GROUP, RETRY, RedisStore};
use crate::kv::{Applied, Backend, Changes};
use crate::queue::{Joint, now_ms};

/// `commit(KEYS, ARGV)` and `settle(ARGV)`, the two scripts' bodies, then
/// `joint.lua`, which calls them.
static SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        "local function commit(KEYS, ARGV)\n{}\nend\nlocal function settle(ARGV)\n{}\nend\n{}",
        include_str!("kv/commit.lua"),
        include_str!("scripts/settle.lua"),
        include_str!("scripts/joint.lua"),
    ))
});

impl RedisStore {
    /// Whether `state` is this store's own state backend.
    pub(super) fn joins(&self, state: &Arc<dyn Backend>) -> bool {
        self.state.get().is_some_and(|own| std::ptr::addr_eq(Arc::as_ptr(own), Arc::as_ptr(state)))
    }

    /// [`crate::queue::Queue::settle_with_state`] on Redis.
    pub(super) fn settle_joint(
        &self,
        changes: &[Changes],
        owners: &[Option<usize>],
        batch: &[Joint],
    ) -> Result<Vec<Applied>> {
        anyhow::ensure!(owners.len() == changes.len(), "{} owners for {} buffers", owners.len(), changes.len());
        let (keys, kv) = super::kv::commit_call(&self.server, changes);
        let held = self.take_held(batch.iter().map(|j| &j.settlement));
        // Each event's 1-based place among those sent (0: not held here,
        // settled already; its buffers are committed all the same).
        let mut place = Vec::with_capacity(batch.len());
        let mut events = Vec::new();
        let mut sent = 0;
        for (j, h) in batch.iter().zip(held) {
            let Some(h) = h else {
                place.push(0);
                continue;
            };
            sent += 1;
            place.push(sent);
            for s in [Some(&j.settlement), j.rerun.as_ref()] {
                let mut args = Vec::new();
                if let Some(s) = s {
                    Self::settlement_args(s, &h, &mut args)?;
                }
                events.push(args.len().to_string());
                events.extend(args);
            }
        }
        let mut call = SCRIPT.prepare_invoke();
        for k in &keys {
            call.key(k);
        }
        call.arg(kv.len());
        for a in &kv {
            call.arg(a);
        }
        call.arg(self.server.prefix()).arg(GROUP).arg(now_ms()).arg(changes.len());
        for owner in owners {
            call.arg(owner.and_then(|i| place.get(i).copied()).unwrap_or(0));
        }
        for a in &events {
            call.arg(a);
        }
        let what = format!("commit {} state buffers and settle {sent} entries", changes.len());
        let (codes, applied): (Vec<i64>, Vec<i64>) = self.server.run(&what, RETRY, |c| call.invoke(c))?;
        self.warn_skipped(&applied);
        let codes = super::kv::applied_of(codes, changes.len()).context("failed to read the joint script's reply")?;
        self.prune_if_cleanup(batch.iter().map(|j| &j.settlement));
        Ok(codes)
    }
}
