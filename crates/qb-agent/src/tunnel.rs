//! Tunneled connections: when the controller asks, the agent dials a local endpoint its plan
//! allows (by name; the controller never names an address) and carries the connection as one
//! HTTP/2 stream on its connection to the controller. Bytes are copied, never interpreted: no
//! redirect is followed, no other address is ever dialed.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use http_body_util::BodyExt;
use hyper::client::conn::http2::SendRequest;
use qb_agent_proto::TUNNEL_PATH;
use qb_agent_proto::plan::Plan;
use tokio::net::TcpStream;

use crate::connect::{Body, controller_request};

/// How long the local endpoint has to accept the connection.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// The address of `endpoint` if `plan` allows it: named in the plan, and on this host.
pub fn allowed(plan: Option<&Plan>, endpoint: &str) -> Result<SocketAddr, String> {
    let address = plan
        .and_then(|p| p.endpoints.get(endpoint))
        .ok_or_else(|| format!("this node's plan allows no endpoint {endpoint:?}"))?;
    if !address.ip().is_loopback() {
        return Err(format!(
            "endpoint {endpoint:?} is {address}, not on this host; only local endpoints are tunneled"
        ));
    }
    Ok(*address)
}

/// Dials `address`; the refusal to report when it does not answer.
pub async fn dial(address: SocketAddr) -> Result<TcpStream, String> {
    match tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(address)).await {
        Ok(Ok(tcp)) => {
            let _ = tcp.set_nodelay(true);
            Ok(tcp)
        }
        Ok(Err(e)) => Err(format!("connecting to {address}: {e}")),
        Err(_) => Err(format!("connecting to {address} timed out")),
    }
}

/// Carries `tcp` as tunnel `stream` until either side closes.
pub async fn carry(
    mut sender: SendRequest<Body>,
    base: &str,
    stream: u64,
    mut tcp: TcpStream,
) -> Result<()> {
    let (body, to_controller) = qb_tunnel::outgoing();
    let request = controller_request(
        hyper::Method::POST,
        &format!("{base}{TUNNEL_PATH}/{stream}"),
    )
    .body(BodyExt::boxed(body))
    .context("building the tunnel request")?;
    let response = sender
        .send_request(request)
        .await
        .context("opening the tunnel")?;
    if !response.status().is_success() {
        bail!(
            "the controller refused tunnel {stream}: {}",
            response.status()
        );
    }
    let mut tunnel = qb_tunnel::Tunnel::new(response.into_body(), to_controller);
    tokio::io::copy_bidirectional_with_sizes(
        &mut tcp,
        &mut tunnel,
        qb_tunnel::COPY_BUFFER,
        qb_tunnel::COPY_BUFFER,
    )
    .await
    .context("carrying the tunnel")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use qb_agent_proto::plan::KUBE_APISERVER_ENDPOINT;

    fn plan(endpoints: &[(&str, &str)]) -> Plan {
        Plan {
            endpoints: endpoints
                .iter()
                .map(|(n, a)| ((*n).to_owned(), a.parse().unwrap()))
                .collect(),
            ..Plan::default()
        }
    }

    #[test]
    fn only_endpoints_the_plan_names_on_this_host_are_dialed() {
        let master = plan(&[(KUBE_APISERVER_ENDPOINT, "127.0.0.1:6443")]);
        assert_eq!(
            allowed(Some(&master), KUBE_APISERVER_ENDPOINT),
            Ok("127.0.0.1:6443".parse().unwrap())
        );
        for asked in [
            "etcd",
            "127.0.0.1:22",
            "10.0.0.1:6443",
            "kube-apiserver ",
            "",
        ] {
            let refused = allowed(Some(&master), asked).unwrap_err();
            assert!(refused.contains("allows no endpoint"), "{asked}: {refused}");
        }
        let worker = plan(&[]);
        assert!(allowed(Some(&worker), KUBE_APISERVER_ENDPOINT).is_err());
        assert!(allowed(None, KUBE_APISERVER_ENDPOINT).is_err());
        let elsewhere = plan(&[(KUBE_APISERVER_ENDPOINT, "10.0.0.1:6443")]);
        assert!(
            allowed(Some(&elsewhere), KUBE_APISERVER_ENDPOINT)
                .unwrap_err()
                .contains("not on this host")
        );
    }

    #[tokio::test]
    async fn a_closed_endpoint_is_a_refusal_naming_it() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let refused = dial(address).await.unwrap_err();
        assert!(refused.contains(&address.to_string()), "{refused}");
    }
}
