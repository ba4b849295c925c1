//! What the server answers to a query, as bytes.
//!
//! The general path reads the query into a hickory message, asks the zone and writes the
//! response as a message. Each name of the zone also has its responses written once by that same
//! path when the zone is built ([`Prepared`]), so the common query — one question, in lowercase,
//! with or without an EDNS record that has no options — is answered by copying its ID, RD flag
//! and question before those bytes: the same bytes as the general path writes, without parsing or
//! encoding a message. A name under the zone that does not exist gets its NXDOMAIN the same way,
//! the SOA's names pointing at the apex in the question; a name outside it (not a reverse name)
//! is forwarded at once. Everything else (mixed case, pod names, several questions, other
//! opcodes, EDNS options, answers too long for the transport) takes the general path.

use std::collections::HashMap;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::zone::{Answer, PodRecords, Zone};

/// The largest UDP answer sent to a client that does not say (RFC 1035).
pub(crate) const CLASSIC_UDP: usize = 512;
/// The largest UDP answer this server sends (the DNS flag day 2020 size).
pub(crate) const MAX_UDP: u16 = 1232;

/// The length of a message's header.
const HEADER: usize = 12;
/// The longest question name (in wire form) answered from prepared bytes; longer ones, rare
/// and near the protocol's limits, take the general path.
const MAX_PREPARED_NAME: usize = 200;
/// `RD`, in the third byte of the header.
const RECURSION_DESIRED: u8 = 0x01;
/// `QR`, `AA` in the third byte; `RA` in the fourth.
const RESPONSE_AUTHORITATIVE: u8 = 0x84;
const RECURSION_AVAILABLE: u8 = 0x80;
const CLASS_IN: u16 = 1;
const NXDOMAIN: u8 = 3;

/// How a query came: UDP answers are bounded in size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    Udp,
    Tcp,
}

/// What to do with a query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    /// Send the response written.
    Answer,
    /// Too broken to answer: nothing.
    Ignore,
    /// For the upstream resolvers, as it came.
    Forward,
}

/// The response to `query` from `zone`, written into `out` (emptied first), or that there is
/// none or that the query is for the upstream resolvers.
pub(crate) fn answer(zone: &Zone, query: &[u8], transport: Transport, out: &mut Vec<u8>) -> Reply {
    out.clear();
    match zone.prepared().answer(query, transport, out) {
        Fast::Answered => Reply::Answer,
        Fast::Forward => Reply::Forward,
        Fast::General => {
            out.clear();
            general(zone, query, transport, out)
        }
    }
}

/// The general path: the query read as a message, the response written as one.
fn general(zone: &Zone, query: &[u8], transport: Transport, out: &mut Vec<u8>) -> Reply {
    let Ok(request) = Message::from_vec(query) else {
        return Reply::Ignore;
    };
    if request.message_type() != MessageType::Query {
        return Reply::Ignore;
    }
    let mut response = response_to(&request);
    let limit = match (transport, request.extensions()) {
        (Transport::Tcp, _) => usize::from(u16::MAX),
        (Transport::Udp, Some(edns)) => usize::from(edns.max_payload().clamp(512, MAX_UDP)),
        (Transport::Udp, None) => CLASSIC_UDP,
    };
    if let Some(edns) = request.extensions() {
        let mut ours = Edns::new();
        ours.set_max_payload(MAX_UDP).set_version(edns.version());
        response.set_edns(ours);
    }
    let [question] = request.queries() else {
        response.set_response_code(ResponseCode::FormErr);
        return written(response.to_vec().ok(), out);
    };
    if request.op_code() != OpCode::Query {
        response.set_response_code(ResponseCode::NotImp);
        return written(response.to_vec().ok(), out);
    }
    match zone.lookup(question.name(), question.query_type()) {
        Answer::NotOurs => Reply::Forward,
        found => written(respond(response, found, limit), out),
    }
}

/// `found` (not [`Answer::NotOurs`]) in `response`, truncated when longer than `limit`.
fn respond(mut response: Message, found: Answer, limit: usize) -> Option<Vec<u8>> {
    let (code, answers, authority): (_, Vec<Record>, _) = match found {
        Answer::NotOurs => return None,
        Answer::Records(records) => (ResponseCode::NoError, records, None),
        Answer::NoData(soa) => (ResponseCode::NoError, Vec::new(), Some(soa)),
        Answer::NxDomain(soa) => (ResponseCode::NXDomain, Vec::new(), Some(soa)),
    };
    response
        .set_authoritative(true)
        .set_response_code(code)
        .add_answers(answers)
        .add_name_servers(authority);
    let Ok(bytes) = response.to_vec() else {
        response.set_response_code(ResponseCode::ServFail);
        return response.to_vec().ok();
    };
    if bytes.len() <= limit {
        return Some(bytes);
    }
    // Too long for UDP: truncated, so the client asks again over TCP.
    response.take_answers();
    response.take_name_servers();
    response.set_truncated(true);
    response.to_vec().ok()
}

fn written(bytes: Option<Vec<u8>>, out: &mut Vec<u8>) -> Reply {
    match bytes {
        Some(bytes) => {
            *out = bytes;
            Reply::Answer
        }
        None => Reply::Ignore,
    }
}

/// The start of the response to `request`: its id, opcode and question, recursion as asked.
fn response_to(request: &Message) -> Message {
    let mut response = Message::new();
    response
        .set_id(request.id())
        .set_message_type(MessageType::Response)
        .set_op_code(request.op_code())
        .set_recursion_desired(request.recursion_desired())
        .set_recursion_available(true)
        .add_queries(request.queries().iter().cloned());
    response
}

/// SERVFAIL to `query`, when no upstream resolver answered it.
pub(crate) fn server_failure(query: &[u8]) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    let mut response = response_to(&request);
    response.set_response_code(ResponseCode::ServFail);
    response.to_vec().ok()
}

/// The responses of every name of a zone, as the general path writes them after the question,
/// and what is needed to write its NXDOMAIN responses.
#[derive(Debug, Default)]
pub(crate) struct Prepared {
    /// By the name's wire form, in lowercase.
    names: HashMap<Box<[u8]>, Responses>,
    /// The zone's apex, in wire form.
    apex: Box<[u8]>,
    apex_labels: usize,
    /// Whether pod names (`<a-b-c-d>.<ns>.pod.<zone>`) resolve: those take the general path.
    pods: bool,
    /// The SOA as NXDOMAIN responses carry it; none when it cannot be written here.
    soa: Option<Soa>,
}

/// What the zone answers for one name, by the question's type.
#[derive(Debug)]
struct Responses {
    /// The types whose response is not `other`'s.
    by_type: Vec<(RecordType, Outcome)>,
    other: Outcome,
}

#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    Respond(Tail),
    Forward,
    General,
}

/// The part of a response after its question, written for a question of the name in lowercase:
/// its name pointers are good for any such question.
#[derive(Clone, Debug, PartialEq)]
struct Tail {
    code: u8,
    answers: [u8; 2],
    authority: [u8; 2],
    bytes: Box<[u8]>,
}

/// The zone's SOA as the authority of an NXDOMAIN response: the owner a pointer to the apex at
/// the end of the question, the names in it their labels below the apex then that pointer.
#[derive(Debug)]
struct Soa {
    /// Type, class, TTL and RDATA length.
    fields: [u8; 10],
    mname: Box<[u8]>,
    rname: Box<[u8]>,
    /// Serial, refresh, retry, expire and minimum.
    numbers: [u8; 20],
    /// The labels just below the apex of `mname` and `rname`: a question ending in one of them
    /// would have its own pointers into it, so it takes the general path.
    near: Vec<Box<[u8]>>,
}

/// What the prepared responses say of a query.
#[derive(Debug, PartialEq, Eq)]
enum Fast {
    /// The response is written.
    Answered,
    Forward,
    General,
}

impl Prepared {
    /// The responses of every name of `zone`.
    pub(crate) fn new(zone: &Zone) -> Self {
        let domain = &zone.config().domain;
        let mut prepared = Self {
            names: HashMap::new(),
            apex: wire_name(domain).into(),
            apex_labels: usize::from(domain.num_labels()),
            pods: zone.config().pods != PodRecords::Disabled,
            soa: None,
        };
        prepared.soa = prepared.nxdomain_soa(zone);
        for (name, records) in zone.existing() {
            // The zone's names are in lowercase already; the question must be, to be copied.
            let name = &name.to_lowercase();
            let key = wire_name(name);
            if prepared.names.contains_key(key.as_slice()) {
                continue;
            }
            let Some(question) = Labels::read(&key) else {
                continue;
            };
            if prepared.is_pod_name(&key, &question) {
                continue;
            }
            // NULL: a type the zone has no record of, answered as every such type.
            let other = outcome(zone, name, RecordType::NULL);
            let mut types: Vec<RecordType> = Vec::new();
            for rtype in records.iter().map(Record::record_type) {
                if rtype != RecordType::NULL && !types.contains(&rtype) {
                    types.push(rtype);
                }
            }
            // Outside the zone only PTR (and ANY) questions are the zone's.
            if !zone.config().domain.zone_of(name) && !types.contains(&RecordType::PTR) {
                types.push(RecordType::PTR);
            }
            let mut by_type: Vec<(RecordType, Outcome)> = types
                .iter()
                .map(|rtype| (*rtype, outcome(zone, name, *rtype)))
                .filter(|(_, outcome)| *outcome != other)
                .collect();
            // ANY answers every record: those of the one type when there is only one.
            let any = match records.first() {
                Some(first)
                    if records
                        .iter()
                        .all(|r| r.record_type() == first.record_type()) =>
                {
                    let rtype = first.record_type();
                    let same = by_type.iter().find(|(t, _)| *t == rtype);
                    same.map_or_else(|| other.clone(), |(_, outcome)| outcome.clone())
                }
                _ => outcome(zone, name, RecordType::ANY),
            };
            if any != other {
                by_type.push((RecordType::ANY, any));
            }
            prepared
                .names
                .insert(key.into(), Responses { by_type, other });
        }
        prepared
    }

    /// The SOA of NXDOMAIN responses, checked against the general path's.
    fn nxdomain_soa(&self, zone: &Zone) -> Option<Soa> {
        let record = zone.soa();
        let RData::SOA(data) = record.data() else {
            return None;
        };
        let below_apex = |name: &Name| {
            let wire = wire_name(name);
            let labels = Labels::read(&wire)?;
            let below = labels.count.checked_sub(self.apex_labels)?;
            (below > 0 && wire.ends_with(&self.apex)).then(|| {
                let prefix = wire[..wire.len() - self.apex.len()].to_vec();
                (prefix, labels.label(&wire, below - 1).to_vec())
            })
        };
        let (mname, mname_near) = below_apex(data.mname())?;
        let (rname, rname_near) = below_apex(data.rname())?;
        let rdata_len = mname.len() + 2 + rname.len() + 2 + 20;
        let mut fields = [0u8; 10];
        fields[..2].copy_from_slice(&u16::from(RecordType::SOA).to_be_bytes());
        fields[2..4].copy_from_slice(&CLASS_IN.to_be_bytes());
        fields[4..8].copy_from_slice(&record.ttl().to_be_bytes());
        fields[8..].copy_from_slice(&u16::try_from(rdata_len).ok()?.to_be_bytes());
        let mut numbers = [0u8; 20];
        numbers[..4].copy_from_slice(&data.serial().to_be_bytes());
        numbers[4..8].copy_from_slice(&data.refresh().to_be_bytes());
        numbers[8..12].copy_from_slice(&data.retry().to_be_bytes());
        numbers[12..16].copy_from_slice(&data.expire().to_be_bytes());
        numbers[16..].copy_from_slice(&data.minimum().to_be_bytes());
        let soa = Soa {
            fields,
            mname: mname.into(),
            rname: rname.into(),
            numbers,
            near: vec![mname_near.into(), rname_near.into()],
        };
        // The general path's NXDOMAIN for a name just below the apex must be this one.
        let probe = zone.config().domain.prepend_label("x").ok()?;
        if soa.near.iter().any(|l| **l == *b"x") {
            return None;
        }
        let Outcome::Respond(general) =
            tail(&probe, RecordType::A, Answer::NxDomain(record.clone()))
        else {
            return None;
        };
        let mut ours = Vec::new();
        soa.write(pointer(HEADER + 2)?, &mut ours);
        let same = general.code == NXDOMAIN
            && general.answers == [0, 0]
            && general.authority == [0, 1]
            && general.bytes[..] == ours[..];
        same.then_some(soa)
    }

    fn is_pod_name(&self, name: &[u8], labels: &Labels) -> bool {
        self.pods && labels.count == self.apex_labels + 3 && labels.label(name, 2) == b"pod"
    }

    /// The response to `query` written into `out`, when it is prepared.
    fn answer(&self, query: &[u8], transport: Transport, out: &mut Vec<u8>) -> Fast {
        let Some(q) = Question::read(query) else {
            return Fast::General;
        };
        let limit = match (transport, q.edns) {
            (Transport::Tcp, _) => usize::from(u16::MAX),
            (Transport::Udp, Some(edns)) => usize::from(edns.payload.clamp(512, MAX_UDP)),
            (Transport::Udp, None) => CLASSIC_UDP,
        };
        let name = q.name(query);
        if let Some(responses) = self.names.get(name) {
            let outcome = responses
                .by_type
                .iter()
                .find(|(t, _)| *t == q.qtype)
                .map_or(&responses.other, |(_, outcome)| outcome);
            return match outcome {
                Outcome::Respond(tail) => {
                    q.write(query, tail.code, tail.answers, tail.authority, out);
                    out.extend_from_slice(&tail.bytes);
                    q.finish(limit, out)
                }
                Outcome::Forward => Fast::Forward,
                Outcome::General => Fast::General,
            };
        }
        let Some(below) = q.labels.count.checked_sub(self.apex_labels) else {
            return self.not_ours(&q);
        };
        let apex_at = match q.labels.starts[..q.labels.count].get(below) {
            Some(start) => usize::from(*start),
            // The apex is the root.
            None => name.len() - 1,
        };
        if name[apex_at..] != self.apex[..] {
            return self.not_ours(&q);
        }
        // Under the zone, and no such name: NXDOMAIN with the SOA.
        let Some(soa) = &self.soa else {
            return Fast::General;
        };
        if below == 0
            || self.is_pod_name(name, &q.labels)
            || soa
                .near
                .iter()
                .any(|l| **l == *q.labels.label(name, below - 1))
        {
            return Fast::General;
        }
        let Some(apex_pointer) = pointer(HEADER + apex_at) else {
            return Fast::General;
        };
        q.write(query, NXDOMAIN, [0, 0], [0, 1], out);
        soa.write(apex_pointer, out);
        q.finish(limit, out)
    }

    /// A name outside the zone, not among its reverse names: forwarded, unless it may be an
    /// address in the cluster's ranges (for the general path to say).
    fn not_ours(&self, q: &Question) -> Fast {
        if q.qtype == RecordType::PTR || q.qtype == RecordType::ANY {
            Fast::General
        } else {
            Fast::Forward
        }
    }
}

impl Soa {
    fn write(&self, apex_pointer: [u8; 2], out: &mut Vec<u8>) {
        out.extend_from_slice(&apex_pointer);
        out.extend_from_slice(&self.fields);
        out.extend_from_slice(&self.mname);
        out.extend_from_slice(&apex_pointer);
        out.extend_from_slice(&self.rname);
        out.extend_from_slice(&apex_pointer);
        out.extend_from_slice(&self.numbers);
    }
}

/// A compression pointer to `offset`.
fn pointer(offset: usize) -> Option<[u8; 2]> {
    let offset = u16::try_from(offset).ok().filter(|o| *o < 0x3FFF)?;
    Some((0xC000 | offset).to_be_bytes())
}

/// What the general path answers to a lowercase question of `name` and `rtype`.
fn outcome(zone: &Zone, name: &Name, rtype: RecordType) -> Outcome {
    tail(name, rtype, zone.lookup(name, rtype))
}

/// The general path's response to a question of `name` and `rtype` whose answer is `found`.
fn tail(name: &Name, rtype: RecordType, found: Answer) -> Outcome {
    if matches!(found, Answer::NotOurs) {
        return Outcome::Forward;
    }
    let mut request = Message::new();
    request.add_query(Query::query(name.clone(), rtype));
    let Some(bytes) = respond(response_to(&request), found, usize::from(u16::MAX)) else {
        return Outcome::General;
    };
    let question = HEADER + wire_name(name).len() + 4;
    let truncated = bytes.get(2).is_none_or(|flags| flags & 0x02 != 0);
    let code = bytes.get(3).map_or(0, |b| b & 0x0F);
    if truncated
        || bytes.len() < question
        || bytes[10..12] != [0, 0]
        || code == ResponseCode::ServFail.low()
    {
        return Outcome::General;
    }
    Outcome::Respond(Tail {
        code,
        answers: [bytes[6], bytes[7]],
        authority: [bytes[8], bytes[9]],
        bytes: bytes[question..].into(),
    })
}

/// `name` in wire form, in lowercase, without compression.
fn wire_name(name: &Name) -> Vec<u8> {
    let mut wire = Vec::with_capacity(name.len() + 2);
    for label in name.iter() {
        wire.push(label.len() as u8);
        wire.extend(label.iter().map(u8::to_ascii_lowercase));
    }
    wire.push(0);
    wire
}

/// Where the labels of a wire-form name start.
struct Labels {
    starts: [u8; MAX_PREPARED_NAME / 2],
    count: usize,
    /// The length of the name, its root label included.
    len: usize,
}

impl Labels {
    /// The labels of the name at the start of `bytes`, if it is one in lowercase, without
    /// compression and no longer than [`MAX_PREPARED_NAME`].
    fn read(bytes: &[u8]) -> Option<Self> {
        let mut labels = Self {
            starts: [0; MAX_PREPARED_NAME / 2],
            count: 0,
            len: 0,
        };
        let mut at = 0;
        loop {
            let len = usize::from(*bytes.get(at)?);
            if len == 0 {
                labels.len = at + 1;
                break;
            }
            // Each label takes two bytes at least, the root one more: `starts` has room.
            let end = at + 1 + len;
            if len > 63 || end >= MAX_PREPARED_NAME {
                return None;
            }
            let label = bytes.get(at + 1..end)?;
            if label.iter().any(u8::is_ascii_uppercase) {
                return None;
            }
            labels.starts[labels.count] = at as u8;
            labels.count += 1;
            at = end;
        }
        Some(labels)
    }

    /// The bytes of label `i` (from the left) of `name`.
    fn label<'n>(&self, name: &'n [u8], i: usize) -> &'n [u8] {
        let at = usize::from(self.starts[i]);
        let len = usize::from(name[at]);
        &name[at + 1..at + 1 + len]
    }
}

/// A query as the prepared responses answer it: one question, of class IN, its name in
/// lowercase, and at most an EDNS record without options, nothing after.
struct Question {
    labels: Labels,
    /// Where the question's name ends (after its root label).
    name_end: usize,
    qtype: RecordType,
    edns: Option<Edns0>,
}

#[derive(Clone, Copy)]
struct Edns0 {
    payload: u16,
    version: u8,
}

impl Question {
    fn read(query: &[u8]) -> Option<Self> {
        let header = query.get(..HEADER)?;
        let count = |i: usize| u16::from_be_bytes([header[i], header[i + 1]]);
        // A query (not a response), opcode QUERY, one question, nothing else but EDNS.
        if header[2] & 0xF8 != 0 || count(4) != 1 || count(6) != 0 || count(8) != 0 {
            return None;
        }
        let additional = count(10);
        let labels = Labels::read(query.get(HEADER..)?)?;
        let name_end = HEADER + labels.len;
        let fixed = query.get(name_end..name_end + 4)?;
        let qtype = u16::from_be_bytes([fixed[0], fixed[1]]);
        if u16::from_be_bytes([fixed[2], fixed[3]]) != CLASS_IN {
            return None;
        }
        let rest = &query[name_end + 4..];
        let edns = match (additional, rest) {
            (0, []) => None,
            // The root name, OPT, the payload, the extended code, version and flags, no data.
            (1, [0, 0, 41, p0, p1, _, version, _, _, 0, 0]) => Some(Edns0 {
                payload: u16::from_be_bytes([*p0, *p1]),
                version: *version,
            }),
            _ => return None,
        };
        Some(Self {
            labels,
            name_end,
            qtype: RecordType::from(qtype),
            edns,
        })
    }

    fn name<'q>(&self, query: &'q [u8]) -> &'q [u8] {
        &query[HEADER..self.name_end]
    }

    /// The header and the question of the response.
    fn write(
        &self,
        query: &[u8],
        code: u8,
        answers: [u8; 2],
        authority: [u8; 2],
        out: &mut Vec<u8>,
    ) {
        out.extend_from_slice(&query[..2]);
        out.push(RESPONSE_AUTHORITATIVE | (query[2] & RECURSION_DESIRED));
        out.push(RECURSION_AVAILABLE | code);
        out.extend_from_slice(&[0, 1]);
        out.extend_from_slice(&answers);
        out.extend_from_slice(&authority);
        out.extend_from_slice(&[0, u8::from(self.edns.is_some())]);
        out.extend_from_slice(&query[HEADER..self.name_end + 4]);
    }

    /// The EDNS record after the sections, if the query had one; the general path for a
    /// response longer than `limit` (truncated there).
    fn finish(&self, limit: usize, out: &mut Vec<u8>) -> Fast {
        if let Some(edns) = self.edns {
            let [p0, p1] = MAX_UDP.to_be_bytes();
            out.extend_from_slice(&[0, 0, 41, p0, p1, 0, edns.version, 0, 0, 0, 0]);
        }
        if out.len() > limit {
            return Fast::General;
        }
        Fast::Answered
    }
}

/// A small zone with every kind of record, and both paths' answers from it: for the tests and
/// the fuzzer, which hold the fast path to the general one byte for byte.
#[cfg(any(test, fuzzing))]
pub(crate) mod sample {
    use std::net::IpAddr;

    use super::*;
    use crate::zone::{Address, Endpoints, Port, Service, ServiceKind, Subset, ZoneConfig};

    fn port(name: &str, port: u16) -> Port {
        Port {
            name: name.to_owned(),
            protocol: "TCP".to_owned(),
            port,
        }
    }

    pub(crate) fn zone() -> Zone {
        let service = |name: &str, kind, ports| Service {
            namespace: "default".into(),
            name: name.into(),
            kind,
            ports,
        };
        let services = vec![
            service(
                "web",
                ServiceKind::ClusterIp(vec!["10.96.0.20".parse().expect("an address")]),
                vec![port("http", 80)],
            ),
            service("db", ServiceKind::Headless, vec![port("pg", 5432)]),
            service("many", ServiceKind::Headless, vec![port("http", 8080)]),
            service(
                "ext",
                ServiceKind::ExternalName("example.org".into()),
                vec![],
            ),
        ];
        let endpoints = |name: &str, addresses| Endpoints {
            namespace: "default".into(),
            name: name.into(),
            subsets: vec![Subset {
                addresses,
                ports: vec![port("http", 8080), port("pg", 5432)],
            }],
        };
        let many = (1..=60)
            .map(|i| Address {
                ip: IpAddr::from([10, 244, 3, i]),
                hostname: None,
            })
            .collect();
        let db = vec![Address {
            ip: "10.244.1.5".parse().expect("an address"),
            hostname: Some("db-0".into()),
        }];
        Zone::build(
            ZoneConfig {
                domain: Name::from_ascii("Cluster.Local.").expect("a name"),
                ttl: 5,
                pods: PodRecords::Insecure,
                reverse: vec![
                    "10.96.0.0/12".parse().expect("a network"),
                    "10.244.0.0/16".parse().expect("a network"),
                ],
            },
            7,
            &services,
            &[endpoints("many", many), endpoints("db", db)],
            &[],
        )
    }

    /// What the general path (hickory's messages) answers, and what [`answer`] does.
    pub(crate) fn both(
        zone: &Zone,
        query: &[u8],
        transport: Transport,
    ) -> ((Reply, Vec<u8>), (Reply, Vec<u8>)) {
        let mut general_out = Vec::new();
        let general_reply = general(zone, query, transport, &mut general_out);
        let mut out = vec![1, 2, 3];
        let reply = answer(zone, query, transport, &mut out);
        if reply != Reply::Answer {
            out.clear();
        }
        if general_reply != Reply::Answer {
            general_out.clear();
        }
        ((general_reply, general_out), (reply, out))
    }
}

/// For the fuzzer: `query` answered from the sample zone over UDP and TCP; the fast path must
/// say what the general path says, byte for byte (a panic is the fuzzer's finding).
#[cfg(fuzzing)]
pub(crate) fn fuzz(query: &[u8]) {
    static ZONE: std::sync::LazyLock<Zone> = std::sync::LazyLock::new(sample::zone);
    for transport in [Transport::Udp, Transport::Tcp] {
        let (general, fast) = sample::both(&ZONE, query, transport);
        assert_eq!(
            fast, general,
            "the fast path differs from the general one on {query:02x?}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::sample::{both, zone};
    use super::*;

    fn query(name: &str, rtype: RecordType, edns: Option<(u16, u8)>, rd: bool) -> Vec<u8> {
        let mut message = Message::new();
        message
            .set_id(0xbeef)
            .set_recursion_desired(rd)
            .add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
        if let Some((payload, version)) = edns {
            let mut ours = Edns::new();
            ours.set_max_payload(payload).set_version(version);
            message.set_edns(ours);
        }
        message.to_vec().unwrap()
    }

    const NAMES: &[&str] = &[
        "web.default.svc.cluster.local.",
        "_http._tcp.web.default.svc.cluster.local.",
        "20.0.96.10.in-addr.arpa.",
        "many.default.svc.cluster.local.",
        "_http._tcp.many.default.svc.cluster.local.",
        "db-0.db.default.svc.cluster.local.",
        "_pg._tcp.db.default.svc.cluster.local.",
        "5.1.244.10.in-addr.arpa.",
        "ext.default.svc.cluster.local.",
        "default.svc.cluster.local.",
        "svc.cluster.local.",
        "pod.cluster.local.",
        "cluster.local.",
        "dns-version.cluster.local.",
        "nope.default.svc.cluster.local.",
        "a.b.c.d.e.nope.default.svc.cluster.local.",
        "x.dns.cluster.local.",
        "dns.cluster.local.",
        "ns.dns.cluster.local.",
        "hostmaster.cluster.local.",
        "local.cluster.local.",
        "cluster.local.cluster.local.",
        "10-244-9-9.default.pod.cluster.local.",
        "x.10-244-9-9.default.pod.cluster.local.",
        "9.9.96.10.in-addr.arpa.",
        "1.0.0.127.in-addr.arpa.",
        "example.org.",
        "local.",
        ".",
    ];

    const TYPES: &[RecordType] = &[
        RecordType::A,
        RecordType::AAAA,
        RecordType::SRV,
        RecordType::PTR,
        RecordType::TXT,
        RecordType::SOA,
        RecordType::CNAME,
        RecordType::ANY,
        RecordType::MX,
        RecordType::NULL,
    ];

    /// `name` with every other letter in upper case.
    fn mixed_case(name: &str) -> String {
        name.chars()
            .enumerate()
            .map(|(i, c)| {
                if i % 2 == 0 {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect()
    }

    #[test]
    fn prepared_responses_are_the_general_paths_bytes() {
        let zone = zone();
        let mut wrong = Vec::new();
        let mut compared = 0;
        for name in NAMES {
            for spelling in [name.to_string(), mixed_case(name)] {
                for rtype in TYPES {
                    for edns in [None, Some((4096, 0)), Some((512, 0)), Some((100, 1))] {
                        for rd in [true, false] {
                            let q = query(&spelling, *rtype, edns, rd);
                            for transport in [Transport::Udp, Transport::Tcp] {
                                let (general, ours) = both(&zone, &q, transport);
                                compared += 1;
                                if general != ours {
                                    wrong.push(format!(
                                        "{spelling} {rtype} {edns:?} rd={rd} {transport:?}:\n  \
                                         general {general:?}\n  ours    {ours:?}"
                                    ));
                                }
                            }
                        }
                    }
                }
            }
        }
        assert!(
            wrong.is_empty(),
            "{} of {compared}:\n{}",
            wrong.len(),
            wrong.join("\n")
        );
    }

    #[test]
    fn common_queries_take_the_prepared_path() {
        let zone = zone();
        let prepared = zone.prepared();
        assert!(prepared.soa.is_some(), "NXDOMAIN is written from bytes");
        let cases = [
            (
                "web.default.svc.cluster.local.",
                RecordType::A,
                Fast::Answered,
            ),
            (
                "web.default.svc.cluster.local.",
                RecordType::AAAA,
                Fast::Answered,
            ),
            (
                "_http._tcp.web.default.svc.cluster.local.",
                RecordType::SRV,
                Fast::Answered,
            ),
            ("20.0.96.10.in-addr.arpa.", RecordType::PTR, Fast::Answered),
            (
                "ext.default.svc.cluster.local.",
                RecordType::A,
                Fast::Answered,
            ),
            (
                "nope.default.svc.cluster.local.",
                RecordType::A,
                Fast::Answered,
            ),
            (
                "example.org.default.svc.cluster.local.",
                RecordType::AAAA,
                Fast::Answered,
            ),
            ("example.org.", RecordType::A, Fast::Forward),
            ("20.0.96.10.in-addr.arpa.", RecordType::A, Fast::Forward),
            // Mixed case, pod names, reverse names nothing holds: the general path.
            (
                "Web.default.svc.cluster.local.",
                RecordType::A,
                Fast::General,
            ),
            (
                "10-244-9-9.default.pod.cluster.local.",
                RecordType::A,
                Fast::General,
            ),
            ("9.9.96.10.in-addr.arpa.", RecordType::PTR, Fast::General),
            ("x.dns.cluster.local.", RecordType::A, Fast::General),
            // 60 addresses: longer than 512 bytes.
            (
                "many.default.svc.cluster.local.",
                RecordType::A,
                Fast::General,
            ),
        ];
        for (name, rtype, want) in cases {
            let mut out = Vec::new();
            let q = query(name, rtype, None, true);
            assert_eq!(
                prepared.answer(&q, Transport::Udp, &mut out),
                want,
                "{name} {rtype}"
            );
        }
        let mut out = Vec::new();
        let q = query(
            "many.default.svc.cluster.local.",
            RecordType::A,
            Some((1232, 0)),
            true,
        );
        assert_eq!(
            prepared.answer(&q, Transport::Udp, &mut out),
            Fast::Answered
        );
    }

    #[test]
    fn odd_queries_get_what_the_general_path_says() {
        let zone = zone();
        let base = query("web.default.svc.cluster.local.", RecordType::A, None, true);
        let with_edns = query(
            "web.default.svc.cluster.local.",
            RecordType::A,
            Some((1232, 0)),
            true,
        );
        let edit = |q: &[u8], f: &dyn Fn(&mut Vec<u8>)| {
            let mut q = q.to_vec();
            f(&mut q);
            q
        };
        let mut two_questions = Message::from_vec(&base).unwrap();
        two_questions.add_query(Query::query(
            Name::from_ascii("db.default.svc.cluster.local.").unwrap(),
            RecordType::A,
        ));
        let mut cookie = Message::from_vec(&with_edns).unwrap();
        cookie
            .extensions_mut()
            .as_mut()
            .unwrap()
            .options_mut()
            .insert(hickory_proto::rr::rdata::opt::EdnsOption::Unknown(
                10,
                vec![1, 2, 3, 4, 5, 6, 7, 8],
            ));
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", Vec::new()),
            ("header only", base[..12].to_vec()),
            ("cut in the name", base[..20].to_vec()),
            ("cut in the type", base[..base.len() - 3].to_vec()),
            ("a response", edit(&base, &|q| q[2] |= 0x80)),
            ("opcode NOTIFY", edit(&base, &|q| q[2] |= 4 << 3)),
            ("opcode STATUS", edit(&base, &|q| q[2] |= 2 << 3)),
            ("opcode 9", edit(&base, &|q| q[2] |= 9 << 3)),
            ("no question", edit(&base[..12], &|q| q[5] = 0)),
            ("two questions", two_questions.to_vec().unwrap()),
            ("class CH", edit(&base, &|q| *q.last_mut().unwrap() = 3)),
            (
                "trailing bytes",
                edit(&base, &|q| q.extend_from_slice(&[0, 0])),
            ),
            ("EDNS with an option", cookie.to_vec().unwrap()),
            ("EDNS cut", with_edns[..with_edns.len() - 2].to_vec()),
            ("EDNS counted, absent", edit(&base, &|q| q[11] = 1)),
            (
                "EDNS payload 0",
                edit(&with_edns, &|q| {
                    let n = q.len();
                    q[n - 8..n - 6].copy_from_slice(&[0, 0]);
                }),
            ),
            (
                "EDNS flags",
                edit(&with_edns, &|q| {
                    let n = q.len();
                    q[n - 7..n - 2].copy_from_slice(&[0x10, 0x01, 0x00, 0x80, 0x00]);
                }),
            ),
            (
                "id, flags AD CD TC AA",
                edit(&base, &|q| {
                    q[..2].copy_from_slice(&[0, 7]);
                    q[2] |= 0x06;
                    q[3] = 0x3f;
                }),
            ),
            (
                "a pointer for the name",
                edit(&base, &|q| {
                    q.truncate(12);
                    q.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
                }),
            ),
            (
                "a label too long",
                edit(&base, &|q| {
                    q.truncate(12);
                    q.push(64);
                    q.extend_from_slice(&[b'a'; 64]);
                    q.extend_from_slice(&[0, 0, 1, 0, 1]);
                }),
            ),
        ];
        let mut cases = cases;
        for labels in [6, 7, 8] {
            let name = format!(
                "{}cluster.local.",
                "abcdefghijklmnopqrstuvwxyz.".repeat(labels)
            );
            cases.push((
                "a long name under the zone",
                query(&name, RecordType::A, None, true),
            ));
        }
        let mut wrong = Vec::new();
        for (what, q) in &cases {
            for transport in [Transport::Udp, Transport::Tcp] {
                let (general, ours) = both(&zone, q, transport);
                if general != ours {
                    wrong.push(format!(
                        "{what} {transport:?}: general {general:?}, ours {ours:?}"
                    ));
                }
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    #[test]
    fn an_edns_query_gets_the_size_and_version_back() {
        let zone = zone();
        let q = query(
            "web.default.svc.cluster.local.",
            RecordType::A,
            Some((4096, 0)),
            false,
        );
        let mut out = Vec::new();
        assert_eq!(answer(&zone, &q, Transport::Udp, &mut out), Reply::Answer);
        let response = Message::from_vec(&out).unwrap();
        assert_eq!(response.id(), 0xbeef);
        assert!(response.authoritative() && !response.recursion_desired());
        assert_eq!(
            response.extensions().as_ref().unwrap().max_payload(),
            MAX_UDP
        );
        assert_eq!(response.answers().len(), 1);
        assert_eq!(
            response.answers()[0].to_string(),
            "web.default.svc.cluster.local. 5 IN A 10.96.0.20"
        );
    }
}
