//! What every hardware driver trait shares: the boxed future its methods
//! return.
//!
//! The console and power traits are object-safe (a board holds a
//! `Box<dyn Console>` and an `Arc<dyn Power>` chosen by its config), so
//! their async methods return boxed futures. The alias lives below both
//! driver families so that neither imports the other for it.

use std::future::Future;
use std::pin::Pin;

/// A boxed, sendable future borrowing from its driver for `'a`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
