//! `cortex-failpoints`: the `cortex` command line with the crash points of
//! [`cortex::fsio::failpoint`] armed from `CORTEX_FAILPOINT`, for the
//! crash-point matrix (`tests/e2e/crash.rs`). The shipped `cortex` binary
//! never arms them.

#[path = "../runtime/src/main.rs"]
mod cli;

fn main() -> std::process::ExitCode {
    cortex::fsio::arm_failpoints();
    cli::main()
}
