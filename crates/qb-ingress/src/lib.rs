//! qb's ingress: the Ingresses of class `qb` ([`routes`]), kept current by watching the cluster
//! ([`watch`]), served as a reverse proxy on every node's ports 80 and 443 ([`proxy`]) with the
//! certificates of the Ingresses' TLS Secrets ([`tls`]).

pub mod pool;
pub mod proxy;
pub mod routes;
pub mod tls;
pub mod watch;
pub mod workers;
