//! The cluster engine's pure logic, apart from all I/O so it can be tested exhaustively:
//! - [`placement`]: how many masters a cluster has and which nodes they are;
//! - [`pki`]: the cluster's certificate authorities and every component's certificate;
//! - [`kubeconfig`]: every kubeconfig qb writes, the components' on nodes and the users';
//! - [`membership`]: a node's etcd membership as the engine keeps it;
//! - [`render`]: each node's [`qb_agent_proto::plan::Plan`] for a Kubernetes version.

pub mod addons;
pub mod kubeconfig;
pub mod membership;
pub mod pki;
pub mod placement;
pub mod render;
