//! The lab's answers to [`LabRequest`](super::api::LabRequest)s: one method per request, grouped
//! by what they are about, in the manner of one file per command.
//!
//! - [`jobs`]: submitting and canceling jobs, and reads of job records.
//! - [`boards`]: the board list, board health, manual power, consoles, and
//!   the metrics scrape.
//! - Reloading the config is `super::reload`'s.
//!
//! The actor's `Handler<LabRequest>` (in `lab/mod.rs`) only dispatches to
//! these methods.
//!
//! Invariants:
//! - A request checks the caller's rights before it changes anything; an
//!   admin-only request checks them before anything else.
//! - A request never blocks the actor thread: store writes, file reads and
//!   messages to board actors are awaited in the reply's future.
//! - A state change is durable in the store before the request is
//!   acknowledged.

mod boards;
mod jobs;

use super::api::LabReply;
use super::LabActor;
use crate::error::{ApiError, ErrorCode};
use actix::prelude::*;

/// What a request's method returns: the answer, once its work is done.
pub(super) type Reply = ResponseActFuture<LabActor, Result<LabReply, ApiError>>;

/// An answer known at once.
pub(super) fn ready(r: Result<LabReply, ApiError>) -> Reply {
    Box::pin(fut::ready(r))
}

/// The error for a board this lab does not have.
pub(super) fn not_found(board: &str) -> ApiError {
    ApiError::new(ErrorCode::NoSuchBoard, format!("no such board `{board}`"))
}
