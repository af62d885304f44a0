//! Outbound webhooks: events delivered by the host (handlers keep no
//! network access) to the endpoints `[webhooks.NAME]` names, as CloudEvents
//! signed per Standard Webhooks.
//!
//! - [`sign`]: the `webhook-signature` header, and its check for receivers.

pub mod sign;
