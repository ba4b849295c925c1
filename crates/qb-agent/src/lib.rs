//! The qb node agent as a library: registers the host with its controller, then keeps one
//! outbound, mutually authenticated channel to it and does what the controller asks. The
//! `qb-agent` binary is [`run::run`] behind a command line.
//!
//! Each part works, and is tested, without a controller:
//! - [`apply`]: converges the host to a signed plan (artifacts, files, services, routes, the
//!   pod network) and wipes what a plan no longer has;
//! - [`supervise`]: runs a plan's services and tasks, restarts them, probes them, keeps their
//!   logs; they outlive the agent and are adopted again when it restarts;
//! - [`preflight`] and [`probe`]: a host's checks and the reachability matrix;
//! - [`kube`], [`etcd`] and [`etcd_snapshot`]: what the controller asks of a cluster's
//!   Kubernetes API and etcd, against the local endpoints;
//! - [`run`], [`connect`], [`work`], [`tunnel`]: the channel to the controller and what comes
//!   over it.
//!
//! What touches the host itself (cgroups, processes, `/proc`) is in `qb-host`, shared with the
//! lab.

pub mod apply;
pub mod balancer;
pub mod builds;
pub mod config;
pub mod connect;
pub mod crash;
pub mod etcd;
pub mod etcd_metrics;
pub mod etcd_snapshot;
pub mod host;
pub mod https;
pub mod images;
pub mod kube;
pub mod logs;
pub mod pod_network;
pub mod preflight;
pub mod probe;
pub mod routes;
pub mod run;
pub mod state;
pub mod supervise;
pub mod tunnel;
pub mod work;
