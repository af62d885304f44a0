//! Why an invocation failed: the [`Fault`] a dispatcher records, and the
//! one function that reads what stopped a guest out of wasmtime's error
//! (its trap code, else its message text) and names it in words a user can
//! act on — which limit, with the config key that sets it.

use serde::{Deserialize, Serialize};
use wasmtime::Trap;

use super::{MAX_WASM_STACK, limiter};
use crate::config::HandlerLimits;
use crate::records::FaultKind;

/// Why an invocation failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    /// What went wrong: the handler's retryable `Err` (`error`), its `Err`
    /// that says a retry cannot help (`refused`), a limit, or a trap.
    pub kind: FaultKind,
    pub message: String,
    /// The whole error chain with the wasm backtrace, for forensics.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

impl Fault {
    /// A fault without a detail chain.
    pub fn new(kind: FaultKind, message: String) -> Fault {
        Fault { kind, message, detail: String::new() }
    }
}

/// Longest summary or error message kept from a handler; they go into logs,
/// archive lines and dead-letter records.
pub const MAX_MESSAGE: usize = 4096;

/// Cuts a handler's text to [`MAX_MESSAGE`] bytes, saying how much was cut.
pub(super) fn cap(mut text: String) -> String {
    if text.len() <= MAX_MESSAGE {
        return text;
    }
    let total = text.len();
    let cut = text.floor_char_boundary(MAX_MESSAGE);
    text.truncate(cut);
    text.push_str(&format!("… ({} of {total} bytes cut)", total - cut));
    text
}

/// What stopped a guest, as far as wasmtime's error says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    /// The epoch deadline interrupted it.
    Interrupt,
    OutOfFuel,
    StackOverflow,
    /// A memory could not grow (or start) within the limit.
    Memory,
    /// A write to stdout/stderr past the pipe's capacity.
    OutputFull,
    /// An out-of-bounds access near 4 GiB: the shadow stack overflowing.
    ShadowStack,
    /// Anything else (a panic, `unreachable`, a missing import…).
    Other,
}

/// Recognises what stopped a guest from wasmtime's error: its trap code
/// when it has one, else the text of its messages. This is the ONE place
/// that matches wasmtime's message text (which a wasmtime upgrade may
/// change; the sandbox tests pin each case). Returns the cause and the
/// root message without the multi-line wasm backtrace around it.
fn recognise(e: &wasmtime::Error, chain: &[String]) -> (Cause, String) {
    let text = chain
        .iter()
        .rev()
        .find(|c| !c.starts_with("error while executing at wasm backtrace"))
        .cloned()
        .unwrap_or_default();
    let cause = match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => Cause::Interrupt,
        Some(Trap::OutOfFuel) => Cause::OutOfFuel,
        Some(Trap::StackOverflow) => Cause::StackOverflow,
        _ if e.downcast_ref::<limiter::MemoryCapExceeded>().is_some() || text.contains("memory minimum size") => {
            Cause::Memory
        }
        _ if text.contains("write beyond capacity") => Cause::OutputFull,
        _ if text.contains("out of bounds memory access") && text.contains("address 0xf") => Cause::ShadowStack,
        _ => Cause::Other,
    };
    (cause, text)
}

/// Names what stopped a handler, in words a user can act on; `default_kind`
/// when nothing more specific is known.
pub(super) fn classify(e: &wasmtime::Error, limits: &HandlerLimits, default_kind: FaultKind) -> Fault {
    let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
    let detail = chain.join(": ");
    let (cause, text) = recognise(e, &chain);
    let (kind, message) = match cause {
        Cause::Interrupt => {
            (FaultKind::Timeout, format!("deadline of {} ms exceeded (limits.deadline_ms)", limits.deadline_ms))
        }
        Cause::OutOfFuel => {
            (FaultKind::Fuel, format!("fuel budget of {} exhausted (limits.fuel)", limits.fuel.unwrap_or(0)))
        }
        Cause::StackOverflow => (
            FaultKind::StackOverflow,
            format!("wasm stack overflow (the stack is capped at {} KiB)", MAX_WASM_STACK >> 10),
        ),
        Cause::Memory => (
            FaultKind::Memory,
            format!(
                "memory limit of {} MiB exceeded (limits.memory_mb, all memories together): {text}",
                limits.memory_mb
            ),
        ),
        Cause::OutputFull => (
            FaultKind::OutputLimit,
            format!("wrote more than {} bytes to stdout/stderr (limits.output_bytes)", limits.output_bytes),
        ),
        Cause::ShadowStack => (
            default_kind,
            format!("{text} (an address near 4 GiB is the guest's shadow stack overflowing: unbounded recursion?)"),
        ),
        Cause::Other => (default_kind, text),
    };
    Fault { kind, message, detail }
}
