//! Wire types of qb's REST API (`/api/v1`).
//!
//! Everything here is plain data: no I/O, no async runtime, no database. Inputs are parsed into
//! validated newtypes at the edge (`Name`, `LabelKey`, `Cidr`, ...), so code holding one never
//! re-checks it.

mod agent_upgrade;
mod alerts;
mod bundle;
pub mod endpoints;
mod health;
mod ids;
mod metrics;
mod model;
mod notifications;
mod problem;
mod report;
mod snapshot;
mod values;

pub use agent_upgrade::*;
pub use alerts::*;
pub use bundle::*;
pub use health::*;
pub use ids::{BootstrapTokenId, ClusterId, NodeId, TenantId, TokenId, UserId};
pub use metrics::*;
pub use model::*;
pub use notifications::*;
pub use problem::{Problem, ProblemCode};
pub use report::*;
pub use snapshot::*;
pub use values::*;

/// The path prefix of the current API version.
pub const API_PREFIX: &str = "/api/v1";
