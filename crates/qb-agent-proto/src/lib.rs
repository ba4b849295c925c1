//! The protocol between `qb-agent` and the controller's agent endpoint.
//!
//! The agent always dials out: TLS to the agent endpoint, verified by a pinned CA.
//!
//! **The channel** is a TLS connection of its own, negotiated by ALPN as [`CHANNEL_ALPN`]
//! (client certificate required): frames both ways from the first byte, [`AgentMessage`]s from
//! the agent (a `Hello` first), [`ControllerMessage`]s from the controller, so the controller
//! pushes instructions the moment they exist. It carries nothing else, so an idle agent costs the
//! controller a TLS session and a few small buffers, no HTTP/2 connection. A controller that
//! will not take the certificate sends [`ControllerMessage::Deauthorized`] and closes.
//!
//! **Requests** go over HTTP/2 connections (ALPN `h2`) the agent opens when it needs one and
//! closes once idle:
//! - `POST /agent/v1/register` (no client certificate yet): a bootstrap token, a CSR and the
//!   host's facts; the answer is the node's certificate. Errors are `qb_api::Problem`s.
//! - `POST /agent/v1/renew` (client certificate required): a new CSR, a new certificate.
//! - `POST /agent/v1/tunnels/{stream}` (client certificate required): one tunneled connection,
//!   opened by the agent when the controller asks ([`ControllerMessage::OpenTunnel`]). The
//!   request body carries the bytes from the local endpoint, the response body the bytes to it;
//!   HTTP/2 flow control keeps each tunnel apart from the others.
//! - plans and artifacts (`qb_agent_proto::plan`), and `POST /agent/v1/channel`: the channel as
//!   agents of protocol 1 hold it, one long-lived HTTP/2 stream (the request body carries the
//!   agent's frames, the response body the controller's), served while such agents upgrade.
//!
//! Every request carries the protocol version ([`PROTOCOL_HEADER`]); the channel names it in
//! its ALPN protocol.
//!
//! **Compatibility.** Within a protocol version, either side may add an optional field (one
//! with a default): the other side ignores fields it does not know, so an older agent reads
//! a newer controller's plans and messages, and a rolled-back agent its newer state. What the
//! other side must act on (a message type, an instruction, a task or probe kind, a field that
//! changes the meaning of others) takes a new protocol version; a controller sends it only to
//! agents that speak that version, and either side refuses a message it does not know
//! ([`FrameError::Unknown`]) rather than skip it.
//!
//! Frames are a 4-byte big-endian length and a JSON document of at most [`MAX_FRAME_BYTES`].
//! No I/O here: [`encode`] and [`FrameDecoder`] work on bytes.

pub mod etcd;
pub mod kube;
pub mod plan;
pub mod preflight;
pub mod values;

use qb_api::{Labels, NodeFacts, NodeId, NodeState, TenantId};
use serde::{Deserialize, Serialize};

use crate::etcd::{EtcdMember, EtcdOp, EtcdRequest, SnapshotTaken};
use crate::kube::{KubeNode, KubeOp, KubeRequest};
use crate::plan::PlanReport;
use crate::preflight::{LocalReport, PreflightCheck, PreflightProbe, ProbeResult};
pub use crate::values::Sha256Hex;

pub const REGISTER_PATH: &str = "/agent/v1/register";
pub const CHANNEL_PATH: &str = "/agent/v1/channel";
pub const RENEW_PATH: &str = "/agent/v1/renew";
pub const TUNNEL_PATH: &str = "/agent/v1/tunnels";

/// The version of this protocol. Every agent request says which it speaks in
/// [`PROTOCOL_HEADER`]; the controller refuses a version outside [`SUPPORTED_PROTOCOLS`] (or
/// none) with 400 `unsupported_protocol` before anything else, and names its own version in
/// the same header of every answer. A change either side could misread takes a new version.
///
/// Protocol 3 added [`Instruction::UpgradeAgent`] and `KubeOp::Uncordon`; protocol 4
/// `EtcdOp::Snapshot`.
pub const PROTOCOL_VERSION: u32 = 4;
/// The versions a controller of this build serves (it keeps older ones while agents upgrade).
pub const SUPPORTED_PROTOCOLS: std::ops::RangeInclusive<u32> = 1..=PROTOCOL_VERSION;
pub const PROTOCOL_HEADER: &str = "qb-agent-protocol";
/// The ALPN protocol of the channel's own connection, which names the agent's protocol.
pub const CHANNEL_ALPN: &[u8] = b"qb-channel/4";
/// The channel's ALPN protocols a controller of this build accepts, with the protocol each
/// names (protocol 1 held the channel as an HTTP/2 stream, [`CHANNEL_PATH`]).
pub const CHANNEL_ALPNS: [(&[u8], u32); 3] = [
    (CHANNEL_ALPN, 4),
    (b"qb-channel/3", 3),
    (b"qb-channel/2", 2),
];

/// The largest frame either side accepts; a larger one ends the channel.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;

/// A host's stable identity: its `/etc/machine-id` (32 lowercase hex digits). A host that
/// registers again with the same machine id is the same node.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MachineId(String);

impl MachineId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for MachineId {
    type Error = qb_api::InvalidValue;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        let s = s.trim().to_owned();
        if s.len() == 32
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(Self(s))
        } else {
            Err(qb_api::InvalidValue(format!(
                "invalid machine id {s:?}: expected 32 lowercase hex digits, as in /etc/machine-id"
            )))
        }
    }
}

impl From<MachineId> for String {
    fn from(m: MachineId) -> String {
        m.0
    }
}

impl std::str::FromStr for MachineId {
    type Err = qb_api::InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::try_from(s.to_owned())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegisterRequest {
    /// The bootstrap token from the agent's configuration.
    pub token: qb_api::Secret,
    /// A CSR for the key the agent generated; the key never leaves the host.
    pub csr_pem: String,
    pub machine_id: MachineId,
    pub facts: NodeFacts,
    #[serde(default)]
    pub labels: Labels,
    pub agent_version: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegisterResponse {
    pub tenant_id: TenantId,
    pub node_id: NodeId,
    pub node_name: qb_api::NodeName,
    pub state: NodeState,
    /// The node's client certificate, signed by the controller's CA.
    pub certificate_pem: String,
    /// The CA that signed it (and the agent endpoint's certificate).
    pub ca_pem: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RenewRequest {
    pub csr_pem: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RenewResponse {
    pub certificate_pem: String,
}

/// Host load, sent with every heartbeat.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HostMetrics {
    /// Busy share of all CPUs since the previous heartbeat, 0–100.
    pub cpu_percent: f32,
    pub load1: f32,
    pub load5: f32,
    pub load15: f32,
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    /// The file system of the agent's state directory.
    pub disk_total_bytes: u64,
    pub disk_available_bytes: u64,
    pub uptime_seconds: u64,
    /// The node's etcd member, on a master, as its own metrics tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd: Option<EtcdMetrics>,
}

/// What an etcd member's metrics say of it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EtcdMetrics {
    /// It knows a leader (`etcd_server_has_leader`).
    pub has_leader: bool,
    /// It is the leader (`etcd_server_is_leader`).
    pub is_leader: bool,
    /// The database file's size, and the part of it in use (the rest is freed by a defrag).
    pub db_size_bytes: u64,
    pub db_in_use_bytes: u64,
    /// Leader changes it has seen since it started.
    pub leader_changes: u64,
}

/// What the agent sends on the channel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentMessage {
    /// First frame of every channel.
    Hello {
        agent_version: String,
        facts: NodeFacts,
        /// The SHA-256 of the agent's binary: which build runs (protocol 3 on).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        build: Option<Sha256Hex>,
        /// The last build the agent upgraded to and went back from, and why.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rolled_back: Option<RolledBack>,
    },
    /// Periodic; `facts` only when they changed since the last frame that carried them.
    Heartbeat {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        facts: Option<NodeFacts>,
        metrics: HostMetrics,
    },
    /// The agent received and carried out an instruction.
    Done { instruction: u64 },
    /// The answer to an instruction that returns something.
    Reply { instruction: u64, outcome: Outcome },
    /// Progress of the node's plan; sent when it changes and after `Hello`.
    Plan(PlanReport),
    /// The agent will not open the tunnel the controller asked for: its plan allows no such
    /// endpoint, or the endpoint did not answer.
    TunnelRefused { stream: u64, reason: String },
    /// The controller has been quiet for [`KEEPALIVE_AFTER`]: answered with
    /// [`ControllerMessage::KeepAlive`], so the agent finds a dead link even where a proxy in
    /// between acknowledges what it sends.
    KeepAlive,
}

/// How long an agent waits on a quiet channel before asking the controller for a sign of life.
pub const KEEPALIVE_AFTER: std::time::Duration = std::time::Duration::from_secs(30);
/// How long an agent waits for that sign before it takes the link for dead.
pub const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// What an instruction produced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    /// Carried out; nothing to return.
    Done,
    Preflight {
        report: LocalReport,
    },
    Probes {
        results: Vec<ProbeResult>,
    },
    EtcdMembers {
        members: Vec<EtcdMember>,
    },
    /// A snapshot taken and uploaded (`EtcdOp::Snapshot`).
    EtcdSnapshot(SnapshotTaken),
    /// The nodes after a Kubernetes node operation.
    KubeNodes {
        nodes: Vec<KubeNode>,
    },
    Log {
        piece: LogPiece,
    },
    Failed {
        error: String,
    },
}

/// What the controller sends on the channel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControllerMessage {
    /// First frame: who the agent is, and how often to heartbeat.
    Welcome {
        node_id: NodeId,
        state: NodeState,
        heartbeat_seconds: u32,
        /// The generation of the node's current plan, if it has one; the agent fetches it
        /// when it holds an older one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        plan_generation: Option<u64>,
    },
    /// A new plan is waiting at [`plan::PLAN_PATH`].
    PlanAvailable { generation: u64 },
    /// The node's lifecycle state changed (e.g. it was authorized).
    State { state: NodeState },
    /// Work to do now. Each has an id the agent reports back in `Done`.
    ///
    /// Boxed: the controller queues messages for every connected agent, and an inline
    /// instruction would make each queue slot several times larger.
    Instruction {
        id: u64,
        instruction: Box<Instruction>,
    },
    /// Open a connection to one of the endpoints the node's plan allows (by name, e.g.
    /// [`plan::KUBE_APISERVER_ENDPOINT`]), and carry it at `TUNNEL_PATH/{stream}`.
    OpenTunnel { stream: u64, endpoint: String },
    /// The node's identity was revoked; the controller closes the connection after this.
    Deauthorized,
    /// The answer to [`AgentMessage::KeepAlive`].
    KeepAlive,
}

/// Instructions the controller pushes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Instruction {
    /// Answer at once (`Done`); measures push latency and liveness end to end.
    Ping { nonce: u64 },
    /// Preflight phase 1: local checks and listeners; answered with `Outcome::Preflight`.
    Preflight(PreflightCheck),
    /// Preflight phase 2: probe the peers; answered with `Outcome::Probes`.
    Probe(PreflightProbe),
    /// An etcd membership operation through the local member; answered with
    /// `Outcome::EtcdMembers` (the membership after the operation).
    Etcd(EtcdRequest),
    /// A Kubernetes node operation through the local API server; answered with
    /// `Outcome::KubeNodes` (the nodes after the operation).
    Kube(KubeRequest),
    /// A piece of one of the node's service logs; answered with `Outcome::Log`.
    Log(LogRequest),
    /// Run this build of the agent (protocol 3 on): answered with `Done` once the build is
    /// staged, just before the agent restarts into it on trial, or at once when it already
    /// runs it.
    UpgradeAgent(SignedAgentBuild),
}

impl Instruction {
    /// The first protocol version whose agents know this instruction.
    pub fn protocol(&self) -> u32 {
        match self {
            Self::Etcd(EtcdRequest {
                op: EtcdOp::Snapshot { .. },
                ..
            }) => 4,
            Self::UpgradeAgent(_) => 3,
            Self::Kube(KubeRequest {
                op: KubeOp::Uncordon { .. },
                ..
            }) => 3,
            _ => 1,
        }
    }
}

/// A build of the agent, as the controller offers it, signed like plans (by a plan signer of
/// a pinned CA, over the exact text of `build`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedAgentBuild {
    /// An [`AgentBuild`]'s JSON text, exactly as signed. Parse it only after the signature
    /// verified.
    pub build: String,
    /// ECDSA P-256 / SHA-256 signature of `build`'s bytes (ASN.1 DER), hex.
    pub signature: String,
    /// The certificate of the key that signed, issued by the controller's CA for plan signing.
    pub signer_pem: String,
}

/// A build of the agent: its binary is the artifact `sha256` (`plan::ARTIFACTS_PATH`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentBuild {
    pub sha256: Sha256Hex,
    pub size: u64,
    /// The agent's version in that build.
    pub version: String,
    /// How long the new build has to reach the controller before the host goes back to the
    /// build it ran before.
    pub trial_seconds: u32,
}

/// A build an agent upgraded to and went back from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolledBack {
    pub build: Sha256Hex,
    pub reason: String,
}

/// Which part of a service's log to read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRequest {
    /// A service of the node's plan, or `qb-agent` for the agent's own log.
    pub service: String,
    /// Read on from here (the `end` of the last piece, to follow the log); without it, the
    /// log's last `max_bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Without `offset`: from the first line written this many seconds ago or later (by the
    /// host's clock, as the lines' own timestamps tell), rather than the log's end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_seconds: Option<u64>,
    /// At most this many bytes (at most [`LogRequest::MAX_BYTES`]).
    pub max_bytes: u32,
}

impl LogRequest {
    /// A frame holds 64 KiB; this leaves room for JSON's escapes in ordinary log text.
    pub const MAX_BYTES: u32 = 24 * 1024;
}

/// A piece of a service's log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPiece {
    /// Whole lines (invalid UTF-8 replaced).
    pub text: String,
    /// Where `text` starts in the log file.
    pub start: u64,
    /// Where to read on from to follow the log.
    pub end: u64,
    /// The log was rotated since `offset`: `text` starts at its new beginning.
    pub rotated: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME_BYTES}")]
    TooLarge(usize),
    #[error("malformed frame")]
    Malformed(#[source] serde_json::Error),
    /// JSON, but no message this side knows: an unknown type or kind, or a required field
    /// missing. Messages and variants are never ignored, only fields (see the crate's docs).
    #[error("a message this side does not know: {0}")]
    Unknown(#[source] serde_json::Error),
}

/// A message as one frame: length, then JSON.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    let json = serde_json::to_vec(message).expect("protocol messages always serialize");
    let mut frame = Vec::with_capacity(4 + json.len());
    frame.extend_from_slice(&u32::try_from(json.len()).unwrap_or(u32::MAX).to_be_bytes());
    frame.extend_from_slice(&json);
    frame
}

/// Splits a byte stream into messages. Feed it chunks as they arrive; take messages out.
#[derive(Default)]
pub struct FrameDecoder {
    buffer: Vec<u8>,
}

impl FrameDecoder {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next complete message, `Ok(None)` when more bytes are needed. An error is final: the
    /// stream is out of step or hostile and must be closed.
    pub fn next_message<T: for<'de> Deserialize<'de>>(&mut self) -> Result<Option<T>, FrameError> {
        if self.buffer.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([
            self.buffer[0],
            self.buffer[1],
            self.buffer[2],
            self.buffer[3],
        ]) as usize;
        if len > MAX_FRAME_BYTES {
            return Err(FrameError::TooLarge(len));
        }
        if self.buffer.len() < 4 + len {
            return Ok(None);
        }
        let frame = &self.buffer[4..4 + len];
        let message = serde_json::from_slice(frame).map_err(|e| {
            match serde_json::from_slice::<serde::de::IgnoredAny>(frame) {
                Ok(_) => FrameError::Unknown(e),
                Err(_) => FrameError::Malformed(e),
            }
        })?;
        self.buffer.drain(..4 + len);
        // Give the room back once drained: an idle channel should hold nothing (one small
        // allocation per heartbeat is the price).
        if self.buffer.is_empty() {
            self.buffer = Vec::new();
        }
        Ok(Some(message))
    }

    /// Bytes received but not yet part of a complete frame.
    pub fn pending(&self) -> usize {
        self.buffer.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heartbeat() -> AgentMessage {
        AgentMessage::Heartbeat {
            facts: None,
            metrics: HostMetrics {
                cpu_percent: 1.5,
                ..Default::default()
            },
        }
    }

    #[test]
    fn frames_round_trip_in_any_chunking() {
        let messages = vec![
            AgentMessage::Hello {
                agent_version: "0.1.0".into(),
                facts: NodeFacts::default(),
                build: Some(Sha256Hex::try_from("ab".repeat(32)).unwrap()),
                rolled_back: Some(RolledBack {
                    build: Sha256Hex::try_from("cd".repeat(32)).unwrap(),
                    reason: "it exited".into(),
                }),
            },
            heartbeat(),
            AgentMessage::Done { instruction: 7 },
        ];
        let bytes: Vec<u8> = messages.iter().flat_map(encode).collect();
        for chunk in [1, 3, 7, bytes.len()] {
            let mut decoder = FrameDecoder::default();
            let mut out = Vec::new();
            for piece in bytes.chunks(chunk) {
                decoder.push(piece);
                while let Some(m) = decoder.next_message::<AgentMessage>().unwrap() {
                    out.push(m);
                }
            }
            assert_eq!(out, messages, "chunk size {chunk}");
            assert_eq!(decoder.pending(), 0);
        }
    }

    #[test]
    fn a_drained_decoder_holds_nothing() {
        let large = AgentMessage::TunnelRefused {
            stream: 1,
            reason: "x".repeat(8000),
        };
        let mut decoder = FrameDecoder::default();
        decoder.push(&encode(&large));
        assert!(decoder.buffer.capacity() > 8000);
        assert_eq!(decoder.next_message::<AgentMessage>().unwrap(), Some(large));
        assert_eq!(decoder.buffer.capacity(), 0);
        // A frame and a half: the half stays until the rest comes.
        let frame = encode(&heartbeat());
        decoder.push(&frame);
        decoder.push(&frame[..5]);
        decoder.next_message::<AgentMessage>().unwrap();
        assert_eq!(decoder.pending(), 5);
        decoder.push(&frame[5..]);
        decoder.next_message::<AgentMessage>().unwrap();
        assert_eq!(decoder.buffer.capacity(), 0);
    }

    #[test]
    fn oversized_and_malformed_frames_are_errors() {
        let mut decoder = FrameDecoder::default();
        decoder.push(&((MAX_FRAME_BYTES as u32) + 1).to_be_bytes());
        assert!(matches!(
            decoder.next_message::<AgentMessage>(),
            Err(FrameError::TooLarge(_))
        ));

        let mut decoder = FrameDecoder::default();
        decoder.push(&5u32.to_be_bytes());
        decoder.push(b"nope!");
        assert!(matches!(
            decoder.next_message::<AgentMessage>(),
            Err(FrameError::Malformed(_))
        ));

        // Unknown message types, and messages missing a required field, are refused.
        for json in [
            r#"{"type":"shell","cmd":"rm -rf /"}"#,
            r#"{"type":"done"}"#,
            r#"{"type":"reply","instruction":1,"outcome":{"kind":"reformat"}}"#,
        ] {
            let mut decoder = FrameDecoder::default();
            decoder.push(&(json.len() as u32).to_be_bytes());
            decoder.push(json.as_bytes());
            let refused = decoder.next_message::<AgentMessage>();
            assert!(
                matches!(refused, Err(FrameError::Unknown(_))),
                "{json}: {refused:?}"
            );
        }
    }

    /// What a newer side adds as an optional field, an older one reads past: messages (at the
    /// top and in a nested struct) and plans with fields this build does not know decode as if
    /// they were not there.
    #[test]
    fn unknown_fields_are_read_past_in_messages_and_plans() {
        use serde_json::json;

        let with_extra = |mut value: serde_json::Value, pointer: &str| {
            value
                .pointer_mut(pointer)
                .and_then(serde_json::Value::as_object_mut)
                .expect("an object there")
                .insert("added_by_a_newer_build".into(), json!({"any": ["thing"]}));
            value
        };
        let hello = AgentMessage::Hello {
            agent_version: "0.1.0".into(),
            facts: NodeFacts::default(),
            build: None,
            rolled_back: None,
        };
        let plan = plan::Plan::default();
        for (message, pointer) in [(&hello, ""), (&hello, "/facts"), (&heartbeat(), "/metrics")] {
            let value = with_extra(serde_json::to_value(message).expect("JSON"), pointer);
            let mut decoder = FrameDecoder::default();
            decoder.push(&encode(&value));
            assert_eq!(
                decoder.next_message::<AgentMessage>().expect("decodes"),
                Some(message.clone())
            );
        }
        let welcome = ControllerMessage::Welcome {
            node_id: NodeId::new(),
            state: NodeState::Authorized,
            heartbeat_seconds: 10,
            plan_generation: Some(4),
        };
        let value = with_extra(serde_json::to_value(&welcome).expect("JSON"), "");
        assert_eq!(
            serde_json::from_value::<ControllerMessage>(value).expect("decodes"),
            welcome
        );
        let value = with_extra(serde_json::to_value(&plan).expect("JSON"), "");
        assert_eq!(
            serde_json::from_value::<plan::Plan>(value).expect("decodes"),
            plan
        );
    }

    #[test]
    fn kube_instructions_and_outcomes_round_trip() {
        use crate::kube::{KubeNode, KubeOp, KubeRequest};

        let request = |op| KubeRequest {
            endpoint: "https://127.0.0.1:6443".into(),
            ca_file: "/etc/qb/pki/ca.crt".into(),
            cert_file: "/etc/qb/pki/admin.crt".into(),
            key_file: "/etc/qb/pki/admin.key".into(),
            op,
        };
        let ops = [
            KubeOp::Nodes,
            KubeOp::Drain {
                node: "w1".into(),
                timeout_seconds: 120,
            },
            KubeOp::DeleteNode { node: "w1".into() },
        ];
        for (id, op) in ops.into_iter().enumerate() {
            let message = ControllerMessage::Instruction {
                id: id as u64,
                instruction: Box::new(Instruction::Kube(request(op))),
            };
            let mut decoder = FrameDecoder::default();
            decoder.push(&encode(&message));
            assert_eq!(
                decoder.next_message::<ControllerMessage>().unwrap(),
                Some(message)
            );
        }
        let reply = AgentMessage::Reply {
            instruction: 3,
            outcome: Outcome::KubeNodes {
                nodes: vec![KubeNode {
                    name: "m1".into(),
                    ready: true,
                    unschedulable: false,
                    kubelet_version: "v1.20.2".into(),
                    role_labels: vec!["node-role.kubernetes.io/worker".into()],
                    master_taint: false,
                }],
            },
        };
        let mut decoder = FrameDecoder::default();
        decoder.push(&encode(&reply));
        assert_eq!(decoder.next_message::<AgentMessage>().unwrap(), Some(reply));

        // The spelling on the wire, which the controller and older agents agree on.
        let drain = Instruction::Kube(request(KubeOp::Drain {
            node: "w1".into(),
            timeout_seconds: 60,
        }));
        assert_eq!(
            serde_json::to_value(&drain).unwrap(),
            serde_json::json!({
                "kind": "kube",
                "endpoint": "https://127.0.0.1:6443",
                "ca_file": "/etc/qb/pki/ca.crt",
                "cert_file": "/etc/qb/pki/admin.crt",
                "key_file": "/etc/qb/pki/admin.key",
                "op": {"op": "drain", "node": "w1", "timeout_seconds": 60},
            })
        );
        // Unknown operations, and operations missing a field, are refused; fields a newer
        // controller added are read past.
        for json in [
            r#"{"kind":"kube","endpoint":"e","ca_file":"c","cert_file":"c","key_file":"k","op":{"op":"reboot"}}"#,
            r#"{"kind":"kube","endpoint":"e","ca_file":"c","cert_file":"c","key_file":"k","op":{"op":"drain","node":"w1"}}"#,
        ] {
            assert!(serde_json::from_str::<Instruction>(json).is_err(), "{json}");
        }
        let newer = r#"{"kind":"kube","endpoint":"e","ca_file":"c","cert_file":"c","key_file":"k","op":{"op":"delete_node","node":"w1","grace":true},"x":1}"#;
        assert!(
            matches!(
                serde_json::from_str::<Instruction>(newer),
                Ok(Instruction::Kube(KubeRequest { op: KubeOp::DeleteNode { node }, .. })) if node == "w1"
            ),
            "{newer}"
        );
    }

    #[test]
    fn machine_ids_are_validated() {
        assert!(
            "0123456789abcdef0123456789abcdef"
                .parse::<MachineId>()
                .is_ok()
        );
        assert!(
            "0123456789abcdef0123456789abcdef\n"
                .parse::<MachineId>()
                .is_ok()
        );
        for bad in [
            "",
            "xyz",
            "0123456789ABCDEF0123456789ABCDEF",
            "0123456789abcdef0123456789abcdef0",
        ] {
            assert!(bad.parse::<MachineId>().is_err(), "{bad}");
        }
    }
}
