//! The storage boundary: [`Store`] is the one door every command and the
//! service go through to reach queued events, claims, settlements, dead
//! letters, the archive and handler state. Two backends sit behind it:
//!
//! - the filesystem under the coordination root ([`crate::queue::FsQueue`],
//!   the embedded default, with [`crate::kv::sqlite`] for state), and
//! - Redis ([`redis`]), selected by `[backend] url` or `CORTEX_BACKEND`,
//!   so that producers and dispatchers on several hosts share one store.
//!
//! What stays on the local root whatever the backend: `cortex.toml`, the
//! handler components and their grants, the category logs, the service's
//! status file and the compiled-component cache. Those belong to a host, not
//! to the shared store.
//!
//! Reads that cross the boundary come back as owned, typed values ([`Live`],
//! [`crate::dlq::Listing`], archive [`Lines`]), so a reader never learns
//! where its data was kept.

use std::sync::Arc;

use anyhow::Result;

use crate::archive::{Lines, Segment};
use crate::config::{BackendKind, Config};
use crate::dlq::Listing;
use crate::event::{Event, Priority};
use crate::layout::Layout;
use crate::queue::{Delivery, EntryName, FsQueue, Queue};

pub mod lease;
pub mod redis;

/// Whether a live entry waits in the queue or is being handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveState {
    Waiting,
    Claimed,
}

/// A queued or claimed entry with what its earlier deliveries left.
#[derive(Debug, Clone)]
pub struct Live {
    pub name: EntryName,
    pub state: LiveState,
    /// The event, or why it could not be read.
    pub event: std::result::Result<Event, String>,
    pub delivery: Delivery,
}

/// The archive as readers see it: days ([`Segment`]s) of JSONL archive
/// records, each read whole or only where some event ids may be.
pub trait ArchiveRead {
    /// Every segment, days in date order.
    ///
    /// # Errors
    /// When the archive cannot be listed.
    fn segments(&self) -> Result<Vec<Segment>>;

    /// Every line of a segment, once.
    ///
    /// # Errors
    /// When it cannot be read.
    fn lines(&self, seg: &Segment) -> Result<Lines>;

    /// The lines of a segment that may name one of `ids` (at least those).
    ///
    /// # Errors
    /// When it cannot be read.
    fn lines_naming(&self, seg: &Segment, ids: &[&str]) -> Result<Lines> {
        let _ = ids;
        self.lines(seg)
    }

    /// Where a segment is kept, for messages.
    fn describe(&self, seg: &Segment) -> String;
}

/// The only door to storage: the [`Queue`] a dispatcher and a producer
/// need, plus what the operators' commands read and repair.
pub trait Store: Queue {
    /// What this store is, for messages (never a secret): `filesystem
    /// /srv/cortex` or `redis://host:6379/0 (prefix cortex)`.
    fn describe(&self) -> String;

    /// Whether the last call reached the store (false while a Redis server
    /// is unreachable); `/readyz` and the `store_reachable` metric say it.
    fn reachable(&self) -> bool {
        true
    }

    /// Wakes a waiting dispatcher through `wake` when events are queued by
    /// another process, until `stop`. The filesystem needs nothing here
    /// (the service watches `queue/`); a shared server tells its
    /// subscribers.
    ///
    /// # Errors
    /// When the watch cannot be started.
    fn watch(&self, wake: std::sync::mpsc::Sender<()>, stop: Arc<std::sync::atomic::AtomicBool>) -> Result<()> {
        let _ = (wake, stop);
        Ok(())
    }

    /// Queued entries (ready and delayed), in claim order.
    ///
    /// # Errors
    /// When the store cannot be read.
    fn entries(&self) -> Result<Vec<EntryName>>;

    /// The event of a queued entry.
    ///
    /// # Errors
    /// When it is gone or does not read.
    fn peek(&self, name: &EntryName) -> Result<Event>;

    /// Queued entries by priority.
    ///
    /// # Errors
    /// When the store cannot be read.
    fn by_priority(&self) -> Result<Vec<(Priority, usize)>> {
        let mut out: std::collections::BTreeMap<Priority, usize> = Default::default();
        for e in self.entries()? {
            *out.entry(e.priority).or_insert(0) += 1;
        }
        Ok(out.into_iter().collect())
    }

    /// Every queued and claimed entry with its event and delivery record
    /// (for `cortex trace`); an entry that moves on while read is left out.
    ///
    /// # Errors
    /// When the store cannot be read.
    fn live(&self) -> Result<Vec<Live>>;

    /// Every dead letter, in key order.
    ///
    /// # Errors
    /// When the store cannot be read.
    fn dead_letters(&self) -> Result<Listing>;

    /// Removes dead letters by key (a key already gone is fine).
    ///
    /// # Errors
    /// When one cannot be removed; those before it are gone.
    fn remove_dead_letters(&self, keys: &[&str]) -> Result<()>;

    /// The archive, or `None` when nothing was archived yet.
    ///
    /// # Errors
    /// When it cannot be opened.
    fn archive(&self) -> Result<Option<Box<dyn ArchiveRead + '_>>>;

    /// Puts a dead-lettered webhook delivery back in its endpoint's outbox.
    ///
    /// # Errors
    /// When the endpoint is no longer configured, or the store keeps no
    /// webhook outbox (only the filesystem backend delivers webhooks).
    fn redeliver_webhook(&self, letter: &crate::records::DeadLetterRecord) -> Result<()> {
        let _ = letter;
        anyhow::bail!(
            "{} delivers no webhooks (they need the filesystem backend); purge the dead letter instead",
            self.describe()
        )
    }

    /// Handler state (`wasi:keyvalue` buckets).
    ///
    /// # Errors
    /// When the state backend cannot be opened.
    fn state(&self) -> Result<Arc<dyn crate::kv::Backend>>;

    /// Says that the service `who` (`hostname:pid`) serves this store, for
    /// a while (`alive`), or no longer (a graceful stop), so that commands
    /// on any host can tell ([`redis::hosts`]). The filesystem's services
    /// say so in `run/services/` instead; nothing to do there.
    ///
    /// # Errors
    /// When the store cannot be written.
    fn announce(&self, who: &str, alive: bool) -> Result<()> {
        let _ = (who, alive);
        Ok(())
    }
}

/// The filesystem store of the root at `layout`, with `config`'s archive
/// settings and webhook routes.
///
/// # Errors
/// When the root is not initialised or a webhook secret is missing.
pub fn open_fs(layout: &Layout, config: &Config) -> Result<FsQueue> {
    let queue = FsQueue::open(layout.clone(), config.validator())?.with_archive(&config.archive);
    queue.set_webhooks(crate::webhooks::Routes::of(config))?;
    Ok(queue)
}

/// The handler state kept in Redis at `url` under `prefix`, without the
/// rest of the store (for `cortex state`).
///
/// # Errors
/// When Redis does not answer.
pub fn open_state(url: &str, prefix: &str) -> Result<Arc<dyn crate::kv::Backend>> {
    let server = Arc::new(self::redis::Redis::open(url, prefix)?);
    Ok(Arc::new(self::redis::kv::RedisKv::new(server)))
}

/// Opens the store `config` (and `CORTEX_BACKEND`) selects for the root at
/// `layout`: the filesystem under the root, or Redis.
///
/// # Errors
/// When the root is not initialised, the backend URL is bad, or Redis does
/// not answer (naming it, without a password, and what to check).
pub fn open(layout: &Layout, config: &Config) -> Result<Arc<dyn Store>> {
    match config.backend.resolve()? {
        BackendKind::Filesystem => Ok(Arc::new(open_fs(layout, config)?)),
        BackendKind::Redis { url, prefix } => {
            layout.require()?;
            if !config.webhooks.is_empty() {
                anyhow::bail!(
                    "[webhooks] needs the filesystem backend (its outbox is written in the filesystem's group commit); remove [webhooks] or [backend] url"
                );
            }
            let server = Arc::new(self::redis::Redis::open(&url, &prefix)?);
            Ok(Arc::new(
                self::redis::RedisStore::open(server)?
                    .with_archive(&config.archive)
                    .with_lease(std::time::Duration::from_millis(config.backend.lease_ms)),
            ))
        }
    }
}
