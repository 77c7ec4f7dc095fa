//! The `fleethook` command's parts: its arguments, the commands that ask the agent over
//! the status socket, and the ones that run on their own.

pub mod args;
pub mod ask;
pub mod local;

use anyhow::Context;

/// A multi-threaded runtime for the commands that are not the agent.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")
}
