//! `cortex-failpoints`: the `cortex` command line with the crash points of
//! [`cortex::fsio::failpoint`] armed from `CORTEX_FAILPOINT`, for the
//! crash-point matrix (`tests/e2e/crash.rs`). The shipped `cortex` binary
//! never arms them.
//!
//! `main.rs` comes in as a module; its own `mod cli;` then resolves beside
//! it (`runtime/src/cli/`), as rustc treats a `#[path]` file like a
//! `mod.rs`.

#[path = "../runtime/src/main.rs"]
mod cortex_main;

fn main() -> std::process::ExitCode {
    cortex::fsio::arm_failpoints();
    cortex_main::main()
}
