//! The controller's integration tests: the REST API through its router, on SQLite and on a real
//! PostgreSQL server started for each test; the API fuzzed through a running controller.
#![allow(clippy::unwrap_used)]

mod support;

mod api_agents;
mod api_alerts;
mod api_auth;
mod api_fuzz;
mod api_input;
mod api_kubeconfig;
mod api_metrics;
mod api_nodes_clusters;
mod api_notifications;
mod api_proxy;
mod api_session;
mod disk_full;
mod openapi;
mod secrets;
mod store_restart;
mod ui;
