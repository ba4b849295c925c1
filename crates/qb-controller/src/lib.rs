//! The qb controller: the REST API over the store, served over TLS.
//!
//! Handlers parse and authorize; the store applies the rules and writes the audit trail.
//! Handlers never run SQL.

pub mod agents;
pub mod api;
pub mod artifacts;
pub mod auth;
pub mod bootstrap;
pub mod engine;
mod error;
mod extract;
pub mod kubeconfig;
pub mod live;
pub mod openapi;
pub mod passwords;
pub mod proxy;
pub mod serve;
pub mod session;
pub mod tls;
pub mod ui;

pub use api::{AppState, router};
pub use error::ApiError;
