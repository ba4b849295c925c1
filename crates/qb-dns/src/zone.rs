//! The cluster's DNS zone as the Kubernetes DNS specification (1.1.0) defines it, built from the
//! cluster's Services, Endpoints and Pods: a snapshot that answers queries without locking, made
//! again whenever they change.
//!
//! - `<service>.<ns>.svc.<zone>`: A/AAAA of a ClusterIP Service's cluster IPs; of a headless
//!   Service's ready endpoints; a CNAME for an ExternalName Service.
//! - `<host>.<service>.<ns>.svc.<zone>`: each ready endpoint of a headless Service, `<host>` its
//!   hostname or else its address with dashes (`10-1-2-3`).
//! - `_<port>._<proto>.<service>.<ns>.svc.<zone>`: SRV per named port — to the Service's name, or
//!   to each endpoint's name for a headless Service.
//! - PTR for cluster IPs and headless endpoints, under the reverse zones of the cluster's ranges.
//! - `<a-b-c-d>.<ns>.pod.<zone>`: pod A/AAAA records, off, for any address (`insecure`, as
//!   kube-dns did) or only for pods that exist in that namespace (`verified`).
//! - `dns-version.<zone>` TXT: the specification's version.
//!
//! A name under the zone that does not exist is NXDOMAIN; one that exists without records of the
//! asked type is NODATA; both carry the zone's SOA, whose minimum is the negative-caching TTL.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use hickory_proto::rr::rdata::{A, AAAA, CNAME, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use ipnet::IpNet;

use crate::wire::Prepared;

/// The version of the Kubernetes DNS specification this zone follows.
pub const SPEC_VERSION: &str = "1.1.0";

/// What the zone serves besides the cluster's objects.
#[derive(Clone, Debug)]
pub struct ZoneConfig {
    /// The cluster domain, e.g. `cluster.local`.
    pub domain: Name,
    /// The TTL of every answer, and the SOA's minimum (negative caching).
    pub ttl: u32,
    pub pods: PodRecords,
    /// Address ranges whose reverse names this zone answers (the Service and pod ranges): a PTR
    /// query for an address in them that nothing holds is NXDOMAIN, not forwarded.
    pub reverse: Vec<IpNet>,
}

/// Whether `<a-b-c-d>.<ns>.pod.<zone>` names resolve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodRecords {
    Disabled,
    /// Any well-formed address in any namespace (kube-dns' behaviour).
    Insecure,
    /// Only addresses of pods that exist in that namespace.
    Verified,
}

/// A Service, as the zone needs it.
#[derive(Clone, Debug)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    pub kind: ServiceKind,
    pub ports: Vec<Port>,
}

#[derive(Clone, Debug)]
pub enum ServiceKind {
    /// Its cluster IPs (one per family).
    ClusterIp(Vec<IpAddr>),
    /// `clusterIP: None`: its names are its endpoints'.
    Headless,
    /// A CNAME to this name.
    ExternalName(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Port {
    /// Empty for an unnamed port (no SRV record).
    pub name: String,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    pub port: u16,
}

/// The ready addresses of a Service (its `Endpoints` object).
#[derive(Clone, Debug)]
pub struct Endpoints {
    pub namespace: String,
    pub name: String,
    pub subsets: Vec<Subset>,
}

#[derive(Clone, Debug)]
pub struct Subset {
    pub addresses: Vec<Address>,
    pub ports: Vec<Port>,
}

#[derive(Clone, Debug)]
pub struct Address {
    pub ip: IpAddr,
    /// The pod's `hostname` when set (its `subdomain` is the Service).
    pub hostname: Option<String>,
}

/// A pod's addresses.
#[derive(Clone, Debug)]
pub struct Pod {
    pub namespace: String,
    pub ips: Vec<IpAddr>,
}

/// What the zone says of a query.
#[derive(Debug, PartialEq)]
pub enum Answer {
    /// Outside the zone and its reverse ranges: for the upstream resolvers.
    NotOurs,
    Records(Vec<Record>),
    /// The name exists, with no record of that type: the SOA goes in the authority section.
    NoData(Record),
    NxDomain(Record),
}

/// A snapshot of the zone.
#[derive(Debug)]
pub struct Zone {
    config: ZoneConfig,
    records: HashMap<Name, Vec<Record>>,
    /// Every name that exists: those with records and every name between them and the zone.
    names: HashSet<Name>,
    soa: Record,
    /// `(namespace, address)` of every pod, for verified pod records.
    pods: HashSet<(String, IpAddr)>,
    /// The answers of every name that exists, encoded for the server.
    prepared: Prepared,
}

impl Zone {
    /// The zone of these objects. Names that are not valid DNS labels (none are, in a valid
    /// cluster) are left out.
    pub fn build(
        config: ZoneConfig,
        serial: u32,
        services: &[Service],
        endpoints: &[Endpoints],
        pods: &[Pod],
    ) -> Self {
        let domain = config.domain.to_lowercase();
        let soa_rdata = SOA::new(
            child(&domain, &["ns", "dns"]),
            child(&domain, &["hostmaster"]),
            serial,
            7200,
            1800,
            86400,
            config.ttl,
        );
        let soa = Record::from_rdata(domain.clone(), config.ttl, RData::SOA(soa_rdata));
        let mut zone = Self {
            records: HashMap::new(),
            names: HashSet::new(),
            soa: soa.clone(),
            pods: HashSet::new(),
            prepared: Prepared::default(),
            config: ZoneConfig {
                domain: domain.clone(),
                ..config
            },
        };
        zone.add(soa);
        zone.add_rdata(
            child(&domain, &["dns-version"]),
            RData::TXT(TXT::new(vec![SPEC_VERSION.to_owned()])),
        );
        zone.names.insert(child(&domain, &["svc"]));
        if zone.config.pods != PodRecords::Disabled {
            zone.names.insert(child(&domain, &["pod"]));
        }
        let by_service: HashMap<(&str, &str), &Endpoints> = endpoints
            .iter()
            .map(|e| ((e.namespace.as_str(), e.name.as_str()), e))
            .collect();
        for service in services {
            let endpoints = by_service.get(&(service.namespace.as_str(), service.name.as_str()));
            zone.add_service(service, endpoints.copied());
        }
        for pod in pods {
            for ip in &pod.ips {
                zone.pods.insert((pod.namespace.to_ascii_lowercase(), *ip));
            }
        }
        zone.prepared = Prepared::new(&zone);
        zone
    }

    /// What the zone serves besides the cluster's objects (its domain in lowercase).
    pub fn config(&self) -> &ZoneConfig {
        &self.config
    }

    /// The zone's SOA record, the authority of negative answers.
    pub fn soa(&self) -> &Record {
        &self.soa
    }

    /// Every name that exists, with its records (none for the names between them and the
    /// zone); a name with records may come again without them.
    pub(crate) fn existing(&self) -> impl Iterator<Item = (&Name, &[Record])> {
        let with_records = self.records.iter().map(|(n, r)| (n, r.as_slice()));
        with_records.chain(self.names.iter().map(|n| (n, &[][..])))
    }

    /// The answers of every name that exists, encoded for the server.
    pub(crate) fn prepared(&self) -> &Prepared {
        &self.prepared
    }

    /// The records, or the reason there are none, for `name` and `rtype`.
    pub fn lookup(&self, name: &Name, rtype: RecordType) -> Answer {
        let name = name.to_lowercase();
        if self.config.domain.zone_of(&name) {
            return self.lookup_forward(&name, rtype);
        }
        if rtype == RecordType::PTR || rtype == RecordType::ANY {
            if let Some(records) = self.records.get(&name) {
                return self.matching(&name, records, rtype);
            }
            if let Ok(net) = name.parse_arpa_name() {
                let ip = net.addr();
                if net.prefix_len() == net.max_prefix_len()
                    && self.config.reverse.iter().any(|r| r.contains(&ip))
                {
                    return Answer::NxDomain(self.soa.clone());
                }
            }
        }
        Answer::NotOurs
    }

    fn lookup_forward(&self, name: &Name, rtype: RecordType) -> Answer {
        if let Some(records) = self.records.get(name) {
            return self.matching(name, records, rtype);
        }
        if let Some(ip) = self.pod_address(name) {
            let rdata = match ip {
                IpAddr::V4(v4) if matches!(rtype, RecordType::A | RecordType::ANY) => {
                    Some(RData::A(A(v4)))
                }
                IpAddr::V6(v6) if matches!(rtype, RecordType::AAAA | RecordType::ANY) => {
                    Some(RData::AAAA(AAAA(v6)))
                }
                _ => None,
            };
            return match rdata {
                Some(rdata) => Answer::Records(vec![Record::from_rdata(
                    name.clone(),
                    self.config.ttl,
                    rdata,
                )]),
                None => Answer::NoData(self.soa.clone()),
            };
        }
        if self.names.contains(name) {
            Answer::NoData(self.soa.clone())
        } else {
            Answer::NxDomain(self.soa.clone())
        }
    }

    /// The records of `rtype` among `records` (a CNAME answers every type).
    fn matching(&self, name: &Name, records: &[Record], rtype: RecordType) -> Answer {
        let found: Vec<Record> = records
            .iter()
            .filter(|r| {
                rtype == RecordType::ANY
                    || r.record_type() == rtype
                    || r.record_type() == RecordType::CNAME
            })
            .map(|r| {
                let mut r = r.clone();
                r.set_name(name.clone());
                r
            })
            .collect();
        if found.is_empty() {
            Answer::NoData(self.soa.clone())
        } else {
            Answer::Records(found)
        }
    }

    /// The address a pod name `<a-b-c-d>.<ns>.pod.<zone>` stands for, when pod records are on
    /// and (verified) such a pod exists.
    fn pod_address(&self, name: &Name) -> Option<IpAddr> {
        if self.config.pods == PodRecords::Disabled {
            return None;
        }
        let extra = name
            .num_labels()
            .checked_sub(self.config.domain.num_labels())?;
        if extra != 3 {
            return None;
        }
        let labels: Vec<String> = name
            .iter()
            .take(3)
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect();
        if labels[2] != "pod" {
            return None;
        }
        let ip = undash(&labels[0])?;
        match self.config.pods {
            PodRecords::Verified if !self.pods.contains(&(labels[1].clone(), ip)) => None,
            _ => Some(ip),
        }
    }

    fn add_service(&mut self, service: &Service, endpoints: Option<&Endpoints>) {
        let Some(fqdn) = self.service_name(service) else {
            return;
        };
        match &service.kind {
            ServiceKind::ExternalName(target) => {
                if let Ok(target) = Name::from_ascii(format!("{}.", target.trim_end_matches('.'))) {
                    self.add_rdata(fqdn.clone(), RData::CNAME(CNAME(target)));
                }
            }
            ServiceKind::ClusterIp(ips) => {
                for ip in ips {
                    self.add_address(fqdn.clone(), *ip);
                    self.add_rdata(reverse(*ip), RData::PTR(PTR(fqdn.clone())));
                }
                for port in service.ports.iter().filter(|p| !p.name.is_empty()) {
                    if let Some(srv) = srv_name(&fqdn, port) {
                        self.add_rdata(srv, RData::SRV(SRV::new(0, 100, port.port, fqdn.clone())));
                    }
                }
            }
            ServiceKind::Headless => {
                self.names.insert(fqdn.clone());
                for subset in endpoints.map_or(&[][..], |e| e.subsets.as_slice()) {
                    for address in &subset.addresses {
                        let host = address.hostname.clone().unwrap_or_else(|| dash(address.ip));
                        let Ok(host_name) = fqdn.prepend_label(host.to_ascii_lowercase()) else {
                            continue;
                        };
                        self.add_address(fqdn.clone(), address.ip);
                        self.add_address(host_name.clone(), address.ip);
                        self.add_rdata(reverse(address.ip), RData::PTR(PTR(host_name.clone())));
                        for port in subset.ports.iter().filter(|p| !p.name.is_empty()) {
                            if let Some(srv) = srv_name(&fqdn, port) {
                                self.add_rdata(
                                    srv,
                                    RData::SRV(SRV::new(0, 100, port.port, host_name.clone())),
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// `<service>.<ns>.svc.<zone>`, if both are valid labels.
    fn service_name(&self, service: &Service) -> Option<Name> {
        let name = Name::from_labels(
            [
                service.name.to_ascii_lowercase(),
                service.namespace.to_ascii_lowercase(),
                "svc".to_owned(),
            ]
            .iter()
            .map(String::as_bytes),
        )
        .ok()?;
        name.append_domain(&self.config.domain).ok()
    }

    fn add_address(&mut self, name: Name, ip: IpAddr) {
        let rdata = match ip {
            IpAddr::V4(v4) => RData::A(A(v4)),
            IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
        };
        self.add_rdata(name, rdata);
    }

    fn add_rdata(&mut self, name: Name, rdata: RData) {
        let record = Record::from_rdata(name, self.config.ttl, rdata);
        self.add(record);
    }

    fn add(&mut self, record: Record) {
        let name = record.name().to_lowercase();
        let set = self.records.entry(name.clone()).or_default();
        if !set.iter().any(|r| r.data() == record.data()) {
            set.push(record);
        }
        // The name and every name between it and the zone exist.
        if self.config.domain.zone_of(&name) {
            let mut n = name;
            while n.num_labels() > self.config.domain.num_labels() && self.names.insert(n.clone()) {
                n = n.base_name();
            }
        }
    }
}

fn child(domain: &Name, labels: &[&str]) -> Name {
    let mut name = domain.clone();
    for label in labels.iter().rev() {
        name = name.prepend_label(*label).expect("a short ASCII label");
    }
    name
}

/// `_<port>._<proto>.<service fqdn>`.
fn srv_name(service: &Name, port: &Port) -> Option<Name> {
    service
        .prepend_label(format!("_{}", port.protocol.to_ascii_lowercase()))
        .ok()?
        .prepend_label(format!("_{}", port.name.to_ascii_lowercase()))
        .ok()
}

/// The reverse name of `ip` (`d.c.b.a.in-addr.arpa.`, or the nibbles under `ip6.arpa.`).
fn reverse(ip: IpAddr) -> Name {
    Name::from(ip).to_lowercase()
}

/// `10.1.2.3` as `10-1-2-3`; IPv6 with `:` as `-`.
fn dash(ip: IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

/// The address a dashed label stands for.
fn undash(label: &str) -> Option<IpAddr> {
    if label.matches('-').count() == 3
        && let Ok(ip) = label.replace('-', ".").parse()
    {
        return Some(ip);
    }
    label.replace('-', ":").parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn port(name: &str, port: u16) -> Port {
        Port {
            name: name.to_owned(),
            protocol: "TCP".to_owned(),
            port,
        }
    }

    fn zone(pod_records: PodRecords) -> Zone {
        let services = vec![
            Service {
                namespace: "default".into(),
                name: "web".into(),
                kind: ServiceKind::ClusterIp(vec!["10.96.0.20".parse().unwrap()]),
                ports: vec![port("http", 80), port("", 8080)],
            },
            Service {
                namespace: "default".into(),
                name: "db".into(),
                kind: ServiceKind::Headless,
                ports: vec![port("pg", 5432)],
            },
            Service {
                namespace: "Default".into(),
                name: "ext".into(),
                kind: ServiceKind::ExternalName("example.org".into()),
                ports: vec![],
            },
            Service {
                namespace: "other".into(),
                name: "empty".into(),
                kind: ServiceKind::Headless,
                ports: vec![],
            },
        ];
        let endpoints = vec![Endpoints {
            namespace: "default".into(),
            name: "db".into(),
            subsets: vec![Subset {
                addresses: vec![
                    Address {
                        ip: "10.244.1.5".parse().unwrap(),
                        hostname: Some("db-0".into()),
                    },
                    Address {
                        ip: "10.244.2.6".parse().unwrap(),
                        hostname: None,
                    },
                ],
                ports: vec![port("pg", 5432)],
            }],
        }];
        let pods = vec![Pod {
            namespace: "default".into(),
            ips: vec!["10.244.1.5".parse().unwrap()],
        }];
        Zone::build(
            ZoneConfig {
                domain: name("cluster.local."),
                ttl: 5,
                pods: pod_records,
                reverse: vec![
                    "10.96.0.0/12".parse().unwrap(),
                    "10.244.0.0/16".parse().unwrap(),
                ],
            },
            1,
            &services,
            &endpoints,
            &pods,
        )
    }

    /// The answer as text: `records: <data>, ...`, `nodata`, `nxdomain` or `not ours`.
    fn ask(zone: &Zone, q: &str, rtype: RecordType) -> String {
        match zone.lookup(&name(q), rtype) {
            Answer::Records(records) => {
                let mut data: Vec<String> = records
                    .iter()
                    .map(|r| {
                        assert_eq!(r.ttl(), 5);
                        assert!(r.name().eq_ignore_root_case(&name(q).to_lowercase()));
                        format!("{} {}", r.record_type(), r.data())
                    })
                    .collect();
                data.sort();
                data.join(", ")
            }
            Answer::NoData(soa) => {
                assert_eq!(soa.record_type(), RecordType::SOA);
                "nodata".into()
            }
            Answer::NxDomain(soa) => {
                assert_eq!(soa.record_type(), RecordType::SOA);
                "nxdomain".into()
            }
            Answer::NotOurs => "not ours".into(),
        }
    }

    #[test]
    fn the_zone_answers_as_the_kubernetes_dns_specification_says() {
        use RecordType::*;
        let zone = zone(PodRecords::Insecure);
        let cases: &[(&str, RecordType, &str)] = &[
            // ClusterIP Services: their IP, SRV per named port, PTR.
            ("web.default.svc.cluster.local.", A, "A 10.96.0.20"),
            ("WEB.Default.SVC.cluster.local.", A, "A 10.96.0.20"),
            ("web.default.svc.cluster.local.", AAAA, "nodata"),
            (
                "_http._tcp.web.default.svc.cluster.local.",
                SRV,
                "SRV 0 100 80 web.default.svc.cluster.local.",
            ),
            ("_http._udp.web.default.svc.cluster.local.", SRV, "nxdomain"),
            (
                "20.0.96.10.in-addr.arpa.",
                PTR,
                "PTR web.default.svc.cluster.local.",
            ),
            // Headless: every ready endpoint, by its hostname or its dashed address.
            (
                "db.default.svc.cluster.local.",
                A,
                "A 10.244.1.5, A 10.244.2.6",
            ),
            ("db-0.db.default.svc.cluster.local.", A, "A 10.244.1.5"),
            (
                "10-244-2-6.db.default.svc.cluster.local.",
                A,
                "A 10.244.2.6",
            ),
            (
                "_pg._tcp.db.default.svc.cluster.local.",
                SRV,
                "SRV 0 100 5432 10-244-2-6.db.default.svc.cluster.local., \
                 SRV 0 100 5432 db-0.db.default.svc.cluster.local.",
            ),
            (
                "5.1.244.10.in-addr.arpa.",
                PTR,
                "PTR db-0.db.default.svc.cluster.local.",
            ),
            // A headless Service without endpoints exists, with no address.
            ("empty.other.svc.cluster.local.", A, "nodata"),
            // ExternalName: a CNAME, whatever is asked.
            ("ext.default.svc.cluster.local.", A, "CNAME example.org."),
            // Names between the records and the zone exist; others do not.
            ("default.svc.cluster.local.", A, "nodata"),
            ("svc.cluster.local.", A, "nodata"),
            (
                "cluster.local.",
                SOA,
                "SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5",
            ),
            ("nope.default.svc.cluster.local.", A, "nxdomain"),
            ("web.nope.svc.cluster.local.", A, "nxdomain"),
            ("dns-version.cluster.local.", TXT, "TXT 1.1.0"),
            // Pods (insecure: any address).
            ("10-244-9-9.default.pod.cluster.local.", A, "A 10.244.9.9"),
            ("10-244-9-9.default.pod.cluster.local.", AAAA, "nodata"),
            ("not-an-ip.default.pod.cluster.local.", A, "nxdomain"),
            // Addresses in the cluster's ranges that nothing holds; everything else upstream.
            ("9.9.96.10.in-addr.arpa.", PTR, "nxdomain"),
            ("1.0.0.127.in-addr.arpa.", PTR, "not ours"),
            ("example.org.", A, "not ours"),
            ("local.", A, "not ours"),
        ];
        let mut wrong = Vec::new();
        for (q, rtype, want) in cases {
            let got = ask(&zone, q, *rtype);
            if got != *want {
                wrong.push(format!("{q} {rtype}: got {got:?}, want {want:?}"));
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    #[test]
    fn pod_records_can_be_off_or_only_for_pods_that_exist() {
        let verified = zone(PodRecords::Verified);
        for (q, want) in [
            ("10-244-1-5.default.pod.cluster.local.", "A 10.244.1.5"),
            ("10-244-9-9.default.pod.cluster.local.", "nxdomain"),
            ("10-244-1-5.other.pod.cluster.local.", "nxdomain"),
        ] {
            assert_eq!(ask(&verified, q, RecordType::A), want, "{q}");
        }
        let off = zone(PodRecords::Disabled);
        assert_eq!(
            ask(&off, "10-244-1-5.default.pod.cluster.local.", RecordType::A),
            "nxdomain"
        );
    }

    #[test]
    fn dashed_addresses_round_trip() {
        for ip in ["10.1.2.3", "fd00::1", "2001:db8::a:b"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(undash(&dash(ip)), Some(ip));
        }
        assert_eq!(undash("10-1-2"), None);
        assert_eq!(undash("web"), None);
    }
}
