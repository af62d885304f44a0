//! What one handler instance may allocate: `limits.memory_mb` over all of
//! its linear memories together, and a fixed number of core instances,
//! memories and tables.
//!
//! wasmtime asks the store's [`ResourceLimiter`] before it creates or grows
//! each memory, one memory at a time; wasmtime's own `StoreLimits` compares
//! each request with the cap alone, so a component with several memories
//! could hold the cap several times over. [`Limiter`] keeps the sum of every
//! memory's size and refuses, with a trap, whatever would take the sum past
//! the cap. The counts are the same caps the pooling allocator enforces per
//! component (see `Sandbox::new`), repeated here so a store never holds more
//! than one component's worth.

use std::fmt;

use wasmtime::ResourceLimiter;

/// Core instances one component may instantiate. Rust (wit-bindgen) and
/// componentize-js components have 3–4, componentize-py ones 14; each of
/// them has one memory and two tables.
pub const MAX_CORE_INSTANCES: u32 = 32;
/// Linear memories one component may define (each counts against
/// `limits.memory_mb`).
pub const MAX_MEMORIES: u32 = 4;
/// Tables one component may define.
pub const MAX_TABLES: u32 = 16;

/// The limiter of one store (one handler instance).
pub struct Limiter {
    /// `limits.memory_mb` in bytes.
    cap: usize,
    /// Bytes of all memories created so far, at their current sizes.
    total: usize,
}

impl Limiter {
    pub fn new(memory_mb: u64) -> Limiter {
        Limiter { cap: usize::try_from(memory_mb << 20).unwrap_or(usize::MAX), total: 0 }
    }
}

/// A memory was refused because the instance's memories would together
/// exceed `limits.memory_mb`; the trap the guest gets.
#[derive(Debug)]
pub struct MemoryCapExceeded {
    /// What the memories would have added up to, in bytes.
    pub wanted: usize,
}

impl fmt::Display for MemoryCapExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "growing a memory would bring the instance's memories to {} bytes in all", self.wanted)
    }
}

impl std::error::Error for MemoryCapExceeded {}

impl ResourceLimiter for Limiter {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        // Past its own declared maximum a memory just does not grow
        // (`memory.grow` returns -1), as in any wasm engine.
        if maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        let wanted = self.total.saturating_sub(current).saturating_add(desired);
        if wanted > self.cap {
            return Err(wasmtime::Error::new(MemoryCapExceeded { wanted }));
        }
        self.total = wanted;
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        // Table elements are bounded by the pooling allocator's slots.
        Ok(maximum.is_none_or(|max| desired <= max))
    }

    fn instances(&self) -> usize {
        MAX_CORE_INSTANCES as usize
    }

    fn tables(&self) -> usize {
        MAX_TABLES as usize
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_holds_for_all_memories_together() {
        let mut l = Limiter::new(10);
        let mib = 1 << 20;
        assert!(l.memory_growing(0, 4 * mib, None).unwrap());
        assert!(l.memory_growing(0, 4 * mib, None).unwrap());
        // A third memory of 4 MiB is under the cap alone, not with the others.
        let refused = l.memory_growing(0, 4 * mib, None).unwrap_err();
        assert!(refused.downcast_ref::<MemoryCapExceeded>().is_some(), "{refused}");
        // Growing one of the first two counts only the growth.
        assert!(l.memory_growing(4 * mib, 6 * mib, None).unwrap());
        assert!(l.memory_growing(6 * mib, 7 * mib, None).is_err());
    }

    #[test]
    fn a_memory_stops_at_its_own_maximum_without_a_trap() {
        let mut l = Limiter::new(64);
        assert!(!l.memory_growing(1 << 20, 3 << 20, Some(2 << 20)).unwrap());
    }
}
