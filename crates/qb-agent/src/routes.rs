//! The routes of a plan: each other node's pod subnet through that node (flannel's host-gw
//! way), kept with `ip route`.
//!
//! The agent marks its routes with its own routing protocol number, so it finds exactly the
//! routes it added — after a restart too — and leaves every other route of the host alone.

use std::collections::BTreeSet;

use qb_agent_proto::plan::Route;
use tokio::process::Command;

/// The `proto` of the agent's routes (`/etc/iproute2/rt_protos` leaves 192–252 free for local
/// use).
const PROTO: &str = "196";

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("the route to {0} goes through a gateway of the other address family")]
    Invalid(String),
    #[error("`ip {args}` failed: {stderr}")]
    Ip { args: String, stderr: String },
    #[error("running `ip {args}`")]
    Spawn {
        args: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`ip -j route` printed what is not JSON: {0}")]
    Listing(String),
}

/// Makes the agent's routes exactly `wanted`: replaces (adds or corrects) each, removes those
/// no longer wanted. Returns a summary for the step's report.
pub async fn converge(wanted: &[Route]) -> Result<String, RouteError> {
    for route in wanted {
        validate(route)?;
    }
    let present = list().await?;
    let wanted_keys: BTreeSet<(String, String)> = wanted
        .iter()
        .map(|r| (r.destination.to_string(), r.via.to_string()))
        .collect();
    let mut removed = 0;
    for (destination, via) in &present {
        if !wanted_keys.contains(&(destination.clone(), via.clone())) {
            let family = if destination.contains(':') {
                "-6"
            } else {
                "-4"
            };
            ip(&[family, "route", "del", destination, "proto", PROTO]).await?;
            removed += 1;
        }
    }
    let mut added = 0;
    for route in wanted {
        let key = (route.destination.to_string(), route.via.to_string());
        if present.contains(&key) {
            continue;
        }
        let family = if route.via.is_ipv6() { "-6" } else { "-4" };
        ip(&[
            family, "route", "replace", &key.0, "via", &key.1, "proto", PROTO,
        ])
        .await?;
        added += 1;
    }
    if added + removed > 0 {
        tracing::info!(added, removed, routes = wanted.len(), "routes converged");
    }
    Ok(format!(
        "{} routes: {added} added, {removed} removed",
        wanted.len()
    ))
}

/// The agent's routes still on the host, as `destination via gateway`: none once a wipe
/// converged on no route.
pub async fn remaining() -> Result<Vec<String>, RouteError> {
    Ok(list()
        .await?
        .into_iter()
        .map(|(destination, via)| format!("route {destination} via {via}"))
        .collect())
}

/// A route's destination and gateway are of one address family (each is well-formed once
/// decoded).
fn validate(route: &Route) -> Result<(), RouteError> {
    let same_family = matches!(
        (route.destination, route.via),
        (ipnet::IpNet::V4(_), std::net::IpAddr::V4(_))
            | (ipnet::IpNet::V6(_), std::net::IpAddr::V6(_))
    );
    if same_family {
        Ok(())
    } else {
        Err(RouteError::Invalid(route.destination.to_string()))
    }
}

/// The agent's routes on the host, as (destination, gateway).
async fn list() -> Result<BTreeSet<(String, String)>, RouteError> {
    let mut found = BTreeSet::new();
    for family in ["-4", "-6"] {
        let text = ip(&["-j", family, "route", "show", "proto", PROTO]).await?;
        let routes: Vec<serde_json::Value> = if text.trim().is_empty() {
            Vec::new()
        } else {
            serde_json::from_str(&text).map_err(|_| RouteError::Listing(text.clone()))?
        };
        for route in routes {
            let dst = route["dst"].as_str().unwrap_or_default();
            let gateway = route["gateway"].as_str().unwrap_or_default();
            // `ip` prints a host route without its prefix length.
            let dst = if dst.contains('/') {
                dst.to_owned()
            } else if family == "-4" {
                format!("{dst}/32")
            } else {
                format!("{dst}/128")
            };
            found.insert((dst, gateway.to_owned()));
        }
    }
    Ok(found)
}

async fn ip(args: &[&str]) -> Result<String, RouteError> {
    let joined = args.join(" ");
    let out = Command::new("ip")
        .args(args)
        .output()
        .await
        .map_err(|source| RouteError::Spawn {
            args: joined.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(RouteError::Ip {
            args: joined,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A route as a plan carries it, decoded.
    fn route(destination: &str, via: &str) -> Result<Route, serde_json::Error> {
        serde_json::from_value(serde_json::json!({"destination": destination, "via": via}))
    }

    #[test]
    fn only_cidrs_of_the_gateways_family_are_routes() {
        validate(&route("10.244.3.0/24", "10.0.0.3").unwrap()).unwrap();
        validate(&route("fd00:244::/64", "fd00::3").unwrap()).unwrap();
        for (destination, via) in [("10.244.3.0/24", "fd00::3"), ("fd00:244::/64", "10.0.0.3")] {
            assert!(
                matches!(
                    validate(&route(destination, via).unwrap()),
                    Err(RouteError::Invalid(_))
                ),
                "{destination} via {via}"
            );
        }
        // What is no CIDR does not even decode.
        for destination in [
            "10.244.3.0",
            "10.244.3.0/33",
            "default",
            "10.244.3.0/24; reboot",
        ] {
            assert!(route(destination, "10.0.0.3").is_err(), "{destination}");
        }
    }
}
