//! The invocation deadline across host calls.
//!
//! The engine's epoch deadline only fires while the guest runs wasm code: a
//! guest waiting inside a host call (`std::thread::sleep`, a clock
//! subscription) is not interrupted. The only host calls that can wait for
//! an unbounded time in this sandbox are `wasi:io/poll`'s `poll` and
//! `pollable.block` (sockets are off, stdin is empty, stdout and stderr are
//! memory pipes, file streams are ready at once), so `wasi:io/poll` is linked
//! through [`Deadlined`], which waits at most until the invocation's
//! wall-clock deadline and then traps with [`Trap::Interrupt`], the same
//! trap as the epoch deadline: the invocation is reported as `timeout`.

use std::time::Instant;

use wasmtime::Trap;
use wasmtime::component::{HasData, Resource, ResourceTable};
use wasmtime_wasi::p2::DynPollable;
use wasmtime_wasi::p2::bindings::io::poll as async_poll;
use wasmtime_wasi::p2::bindings::sync::io::poll;
use wasmtime_wasi::runtime::in_tokio;

/// `wasi:io/poll` bounded by the invocation's deadline.
pub struct Deadlined<'a> {
    pub table: &'a mut ResourceTable,
    pub deadline: Instant,
}

/// The [`HasData`] marker that links [`Deadlined`].
pub struct DeadlinedData;

impl HasData for DeadlinedData {
    type Data<'a> = Deadlined<'a>;
}

impl Deadlined<'_> {
    /// Runs a wait until it ends or the deadline passes. A wait that is
    /// ready at once still succeeds after the deadline (the epoch trap
    /// stops the guest as soon as it is back in wasm).
    fn bounded<T>(deadline: Instant, wait: impl Future<Output = wasmtime::Result<T>>) -> wasmtime::Result<T> {
        in_tokio(async move {
            match tokio::time::timeout_at(deadline.into(), wait).await {
                Ok(done) => done,
                Err(_elapsed) => Err(Trap::Interrupt.into()),
            }
        })
    }
}

impl poll::Host for Deadlined<'_> {
    fn poll(&mut self, pollables: Vec<Resource<DynPollable>>) -> wasmtime::Result<Vec<u32>> {
        Self::bounded(self.deadline, async_poll::Host::poll(&mut *self.table, pollables))
    }
}

impl poll::HostPollable for Deadlined<'_> {
    fn ready(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<bool> {
        Self::bounded(self.deadline, async_poll::HostPollable::ready(&mut *self.table, pollable))
    }

    fn block(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        Self::bounded(self.deadline, async_poll::HostPollable::block(&mut *self.table, pollable))
    }

    fn drop(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        async_poll::HostPollable::drop(&mut *self.table, pollable)
    }
}
