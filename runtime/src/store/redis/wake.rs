//! Wake-ups across hosts: the enqueue and settle scripts `PUBLISH` on
//! `{prefix}:wake` when they queue events, and every `cortex serve` on the
//! prefix subscribes, so a service that waits for work hears of an event
//! queued on another host at once instead of at its next one-second look.
//! A hint only: the claim loop reads the streams whatever it hears, so a
//! lost message (the subscriber reconnecting) costs latency, never an event.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::time::Duration;

use super::Redis;

/// How often the subscriber looks at `stop` while nothing is published.
const LOOK: Duration = Duration::from_millis(500);

/// Subscribes to the wake channel and sends `wake` per message until `stop`
/// or the receiver goes; reconnects with backoff while the server is gone.
pub(super) fn subscribe(server: &Redis, wake: &Sender<()>, stop: &Arc<AtomicBool>) {
    let channel = server.key("wake");
    let mut backoff = Duration::from_millis(50);
    while !stop.load(Ordering::Relaxed) {
        let result = server.dedicated(LOOK).and_then(|mut conn| {
            let mut pubsub = conn.as_pubsub();
            pubsub.subscribe(&channel)?;
            backoff = Duration::from_millis(50);
            loop {
                if stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
                match pubsub.get_message() {
                    Ok(_) => {
                        if wake.send(()).is_err() {
                            return Ok(());
                        }
                    }
                    Err(e) if e.is_timeout() => {}
                    Err(e) => return Err(e),
                }
            }
        });
        match result {
            Ok(()) => return,
            Err(e) => {
                server.set_reachable(false);
                tracing::warn!(server = %server.describe(), error = %e, "the wake-up subscriber lost Redis; retrying in {backoff:?}");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}
