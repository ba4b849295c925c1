//! Validated values: each is parsed once at the edge and cannot hold an invalid value.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a value was rejected. The message names the value and the rule it broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(pub String);

fn invalid(msg: impl Into<String>) -> InvalidValue {
    InvalidValue(msg.into())
}

/// How many characters of a bad input an error message quotes.
pub const QUOTED_CHARS: usize = 64;

/// `s` for an error message: quoted and escaped as `{:?}` does, but only its first
/// [`QUOTED_CHARS`] characters, then `…` and its length. A message about a 60 KB name says what
/// is wrong without repeating the name.
pub fn quote(s: &str) -> Quoted<'_> {
    Quoted(s)
}

/// Input quoted for a message; see [`quote`].
pub struct Quoted<'a>(&'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match prefix(self.0, QUOTED_CHARS) {
            None => write!(f, "{:?}", self.0),
            Some(start) => write!(f, "{start:?}… ({} characters)", self.0.chars().count()),
        }
    }
}

/// The first `chars` characters of `s`, if it has more.
pub(crate) fn prefix(s: &str, chars: usize) -> Option<&str> {
    s.char_indices().nth(chars).map(|(end, _)| &s[..end])
}

/// The schema of a string that must match `pattern` (an ECMA-262 regular expression, as
/// OpenAPI reads it) and hold at most `max_chars` characters: the same rule as the value's
/// check, so a client or a schema-driven fuzzer knows what the server accepts.
pub fn string_schema(
    pattern: &str,
    max_chars: usize,
    example: &str,
) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(pattern))
        .max_length(Some(max_chars))
        .examples([example])
        .into()
}

/// The schema of a JSON object whose keys are `K`s and values `V`s.
pub fn map_schema<K: utoipa::PartialSchema, V: utoipa::PartialSchema>()
-> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::RefOr;
    use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Type};
    let RefOr::T(keys) = K::schema() else {
        unreachable!("map keys are strings with an inline schema")
    };
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property_names(Some(keys))
        .additional_properties(Some(AdditionalProperties::RefOr(V::schema())))
        .into()
}

macro_rules! string_value {
    ($(#[$doc:meta])* $name:ident, $check:path, $example:literal, $pattern:expr, $max_chars:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                string_schema($pattern, $max_chars, $example)
            }
        }

        impl utoipa::ToSchema for $name {}

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidValue;
            fn try_from(s: String) -> Result<Self, InvalidValue> {
                $check(&s)?;
                Ok(Self(s))
            }
        }

        impl FromStr for $name {
            type Err = InvalidValue;
            fn from_str(s: &str) -> Result<Self, InvalidValue> {
                Self::try_from(s.to_owned())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::try_from(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

/// [`Name`]'s rule as a pattern: a DNS-1123 label.
pub const NAME_PATTERN: &str = "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$";
/// [`NodeName`]'s rule as a pattern (with at most 253 characters): a DNS-1123 subdomain. A
/// cluster's or node's id (a UUID) matches it and [`NAME_PATTERN`] too.
pub const NODE_NAME_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$";
/// [`LabelKey`]'s rule as a pattern: an optional DNS prefix (at most 253 characters, which the
/// pattern cannot say) and `/`, then a label segment.
pub const LABEL_KEY_PATTERN: &str = r"^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$";
/// [`LabelValue`]'s rule as a pattern: empty or a label segment.
pub const LABEL_VALUE_PATTERN: &str = "^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$";

/// `true` for a DNS-1123 label: 1–63 of `a-z 0-9 -`, starting and ending with a letter or digit.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn check_name(s: &str) -> Result<(), InvalidValue> {
    if is_dns_label(s) {
        Ok(())
    } else {
        Err(invalid(format!(
            "invalid name {}: use 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit",
            quote(s)
        )))
    }
}

fn check_node_name(s: &str) -> Result<(), InvalidValue> {
    if !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label) {
        Ok(())
    } else {
        Err(invalid(format!(
            "invalid node name {}: use a lowercase DNS name (labels of 1-63 letters, digits or '-', separated by '.'; at most 253 characters)",
            quote(s)
        )))
    }
}

string_value!(
    /// The name of a tenant, user or cluster: a DNS-1123 label (`clus100`).
    Name, check_name, "clus100", NAME_PATTERN, 63
);
string_value!(
    /// The name of a node: a lowercase DNS-1123 subdomain, normally its hostname.
    NodeName, check_node_name, "host-1.rack2", NODE_NAME_PATTERN, 253
);

/// Kubernetes' rule for a label name segment and a label value: at most 63 of
/// `A-Z a-z 0-9 - _ .`, starting and ending with a letter or digit.
fn is_label_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

fn check_label_key(s: &str) -> Result<(), InvalidValue> {
    let ok = match s.split_once('/') {
        Some((prefix, name)) => check_node_name(prefix).is_ok() && is_label_segment(name),
        None => is_label_segment(s),
    };
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "invalid label key {}: use an optional DNS prefix and '/', then 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
            quote(s)
        )))
    }
}

fn check_label_value(s: &str) -> Result<(), InvalidValue> {
    if s.is_empty() || is_label_segment(s) {
        Ok(())
    } else {
        Err(invalid(format!(
            "invalid label value {}: use at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
            quote(s)
        )))
    }
}

string_value!(
    /// A label key, with Kubernetes' syntax (`topology.kubernetes.io/zone`, `rack`).
    LabelKey, check_label_key, "topology.kubernetes.io/zone", LABEL_KEY_PATTERN, 253 + 1 + 63
);
string_value!(
    /// A label value, with Kubernetes' syntax (may be empty).
    LabelValue, check_label_value, "zone-a", LABEL_VALUE_PATTERN, 63
);

/// A node's labels.
pub type Labels = BTreeMap<LabelKey, LabelValue>;

fn check_description(s: &str) -> Result<(), InvalidValue> {
    if s.chars().count() <= 200 && !s.chars().any(char::is_control) {
        Ok(())
    } else {
        Err(invalid(
            "invalid description: at most 200 characters, no control characters",
        ))
    }
}

string_value!(
    /// Free text describing a token: at most 200 characters, no control characters.
    Description, check_description, "ci pipeline", r"^[^\u0000-\u001F\u007F-\u009F]*$", 200
);

/// The longest version, with its build.
const MAX_VERSION_CHARS: usize = 32;

fn check_version(s: &str) -> Result<(), InvalidValue> {
    let (release, build) = match s.split_once('+') {
        Some((release, build)) => (release, Some(build)),
        None => (s, None),
    };
    let parts: Vec<&str> = release.split('.').collect();
    let numeric = |p: &&str| !p.is_empty() && p.len() <= 4 && p.bytes().all(|b| b.is_ascii_digit());
    let build_ok = build.is_none_or(|b| {
        b.split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-'))
    });
    let short = s.len() <= MAX_VERSION_CHARS;
    if parts.len() == 3 && parts.iter().all(numeric) && parts[0] == "1" && build_ok && short {
        Ok(())
    } else {
        Err(invalid(format!(
            "invalid Kubernetes version {}: expected MAJOR.MINOR.PATCH such as 1.20.2, optionally with a build of its own such as 1.20.2+qb.1",
            quote(s)
        )))
    }
}

string_value!(
    /// A release of Kubernetes as qb ships it, `1.MINOR.PATCH`, optionally with a build of its
    /// own after a `+` (`1.20.2+qb.1`, as k3s names `v1.20.2+k3s1`): the same Kubernetes
    /// release in another bundle, e.g. with another etcd. Bundles are keyed by it.
    KubernetesVersion, check_version, "1.20.2",
    r"^1\.[0-9]{1,4}\.[0-9]{1,4}(\+[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?$", MAX_VERSION_CHARS
);

impl KubernetesVersion {
    /// The version every new cluster gets unless it asks for another.
    pub fn default_version() -> Self {
        Self("1.20.2".to_owned())
    }

    /// `(major, minor, patch)`: what Kubernetes itself reports (the build is qb's own).
    pub fn release(&self) -> (u32, u32, u32) {
        let release = self.0.split('+').next().unwrap_or_default();
        let mut parts = release.split('.').map(|p| p.parse().unwrap_or_default());
        let mut next = || parts.next().unwrap_or_default();
        (next(), next(), next())
    }

    /// The build after the `+`, if any.
    pub fn build(&self) -> Option<&str> {
        self.0.split_once('+').map(|(_, build)| build)
    }
}

/// A network range in CIDR notation with no host bits set (`10.20.0.0/16`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, utoipa::ToSchema)]
#[schema(value_type = String, example = "10.20.0.0/16")]
pub struct Cidr(ipnet::IpNet);

impl Cidr {
    pub fn net(&self) -> ipnet::IpNet {
        self.0
    }

    /// `true` when the two ranges share at least one address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.0.contains(&other.0.network()) || other.0.contains(&self.0.network())
    }
}

impl FromStr for Cidr {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        let net: ipnet::IpNet = s.parse().map_err(|_| {
            invalid(format!(
                "invalid CIDR {}: expected ADDRESS/PREFIX such as 10.20.0.0/16",
                quote(s)
            ))
        })?;
        if net.trunc() != net {
            return Err(invalid(format!(
                "invalid CIDR {}: host bits are set; did you mean {}?",
                quote(s),
                net.trunc()
            )));
        }
        let max_prefix = match net {
            ipnet::IpNet::V4(_) => 28,
            ipnet::IpNet::V6(_) => 120,
        };
        if net.prefix_len() > max_prefix || net.prefix_len() < 8 {
            return Err(invalid(format!(
                "invalid CIDR {}: the prefix length must be between 8 and {max_prefix}",
                quote(s)
            )));
        }
        Ok(Self(net))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// How many masters (control-plane + etcd members) a cluster runs: `"auto"` lets the controller
/// choose from the node count; an explicit count must be odd (etcd never runs an even membership).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MasterCount {
    #[default]
    Auto,
    Count(u8),
}

impl FromStr for MasterCount {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        if s == "auto" {
            return Ok(Self::Auto);
        }
        match s.parse::<u8>() {
            Ok(n) if n % 2 == 1 && n <= 9 => Ok(Self::Count(n)),
            _ => Err(invalid(format!(
                "invalid master count {}: use \"auto\" or an odd number from 1 to 9",
                quote(s)
            ))),
        }
    }
}

impl fmt::Display for MasterCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Count(n) => n.fmt(f),
        }
    }
}

impl Serialize for MasterCount {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MasterCount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        let text = match Raw::deserialize(d)? {
            Raw::Number(n) => n.to_string(),
            Raw::Text(s) => s,
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// An equality-based label selector, as in Kubernetes: `zone=a,rack!=r1,gpu,!tainted`.
#[derive(Clone, Debug, PartialEq, Eq, utoipa::ToSchema)]
#[schema(value_type = String, example = "topology.kubernetes.io/zone=zone-a,!maintenance")]
pub struct Selector(Vec<Requirement>);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    Equals(LabelKey, LabelValue),
    NotEquals(LabelKey, LabelValue),
    Exists(LabelKey),
    NotExists(LabelKey),
}

impl Selector {
    pub fn matches(&self, labels: &Labels) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::NotExists(k) => !labels.contains_key(k),
        })
    }
}

impl FromStr for Selector {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        let mut reqs = Vec::new();
        for part in s.split(',').map(str::trim) {
            if part.is_empty() {
                return Err(invalid(format!(
                    "invalid selector {}: empty requirement",
                    quote(s)
                )));
            }
            let req = if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(k.trim().parse()?, v.trim().parse()?)
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Requirement::Equals(k.trim().parse()?, v.trim().parse()?)
            } else if let Some(k) = part.strip_prefix('!') {
                Requirement::NotExists(k.trim().parse()?)
            } else {
                Requirement::Exists(part.parse()?)
            };
            reqs.push(req);
        }
        Ok(Self(reqs))
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match r {
                Requirement::Equals(k, v) => write!(f, "{k}={v}")?,
                Requirement::NotEquals(k, v) => write!(f, "{k}!={v}")?,
                Requirement::Exists(k) => write!(f, "{k}")?,
                Requirement::NotExists(k) => write!(f, "!{k}")?,
            }
        }
        Ok(())
    }
}

impl Serialize for Selector {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Selector {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rule a value's schema states (its pattern and length) and the rule its check
    /// enforces accept the same strings: every short string of a small alphabet, and the
    /// lengths at each limit.
    #[test]
    fn schemas_state_the_rules_the_checks_enforce() {
        fn agrees<T: utoipa::PartialSchema + FromStr>(samples: &[String]) {
            let utoipa::openapi::RefOr::T(utoipa::openapi::schema::Schema::Object(schema)) =
                T::schema()
            else {
                panic!("a string value's schema is an inline object");
            };
            let pattern = regex::Regex::new(schema.pattern.as_deref().unwrap()).unwrap();
            let max = schema.max_length.unwrap();
            for s in samples {
                let stated = pattern.is_match(s) && s.chars().count() <= max;
                assert_eq!(
                    stated,
                    s.parse::<T>().is_ok(),
                    "{} {s:?}: the schema says {stated}",
                    std::any::type_name::<T>()
                );
            }
        }
        let alphabet = ['a', 'Z', '0', '-', '.', '_', '/', '\n', 'é', '\u{85}', ' '];
        let mut samples = vec![String::new()];
        for _ in 0..4 {
            let longer: Vec<String> = samples
                .iter()
                .filter(|s| s.chars().count() == samples.last().unwrap().chars().count())
                .flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}")))
                .collect();
            samples.extend(longer);
        }
        let label = |n: usize| "a".repeat(n);
        for n in [62, 63, 64, 200, 201, 253, 254] {
            samples.push(label(n));
            samples.push(format!("{}.{}", label(n), label(3)));
            samples.push(format!(
                "{}/x",
                [label(63), label(63), label(63), label(n)].join(".")
            ));
            samples.push(format!("x/{}", label(n)));
        }
        samples.extend(
            [
                "1.20.2",
                "1.2000.1",
                "1.20000.1",
                "2.0.0",
                "1.20",
                "1.20.2\n",
            ]
            .map(String::from),
        );
        agrees::<Name>(&samples);
        agrees::<NodeName>(&samples);
        // The one rule a pattern cannot state: a label key's prefix has at most 253 characters.
        let (long_prefix, keys): (Vec<String>, Vec<String>) =
            samples.iter().cloned().partition(|s| {
                s.split_once('/')
                    .is_some_and(|(prefix, _)| prefix.len() > 253)
            });
        assert!(!long_prefix.is_empty());
        assert!(long_prefix.iter().all(|s| s.parse::<LabelKey>().is_err()));
        agrees::<LabelKey>(&keys);
        agrees::<LabelValue>(&samples);
        agrees::<Description>(&samples);
        agrees::<KubernetesVersion>(&samples);
    }

    #[test]
    fn a_secret_shows_only_its_length_but_travels_whole() {
        let key = "-----BEGIN PRIVATE KEY-----\nMIGHAgEA\n-----END PRIVATE KEY-----\n";
        #[derive(Debug, Serialize, Deserialize)]
        struct File {
            content: Secret,
        }
        let file = File {
            content: Secret::new(key),
        };
        let shown = format!("{file:?} {} {file:#?}", file.content);
        assert!(
            !shown.contains("MIGHAgEA") && shown.contains("63 bytes"),
            "{shown}"
        );
        let wire = serde_json::to_string(&file).unwrap();
        assert_eq!(wire, serde_json::json!({ "content": key }).to_string());
        let back: File = serde_json::from_str(&wire).unwrap();
        assert_eq!(back.content.expose(), key);
    }

    #[test]
    fn messages_quote_at_most_a_prefix_of_the_input() {
        assert_eq!(quote("a\"b").to_string(), r#""a\"b""#);
        let exact = "x".repeat(QUOTED_CHARS);
        assert_eq!(quote(&exact).to_string(), format!("{exact:?}"));
        let long = "é".repeat(60_000);
        assert_eq!(
            quote(&long).to_string(),
            format!("{:?}… (60000 characters)", "é".repeat(QUOTED_CHARS))
        );
        let err = "x".repeat(60_000).parse::<Name>().unwrap_err().0;
        assert!(
            err.len() < 300 && err.starts_with("invalid name \"xxx") && err.contains("1-63"),
            "{err}"
        );
    }

    #[test]
    fn names_follow_dns_label_rules() {
        for ok in ["a", "clus100", "web-1", &"x".repeat(63)] {
            assert!(ok.parse::<Name>().is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a_b",
            "a.b",
            "a b",
            "ü",
            &"x".repeat(64),
            "a;drop",
        ] {
            assert!(bad.parse::<Name>().is_err(), "{bad}");
        }
    }

    #[test]
    fn node_names_allow_dots_but_not_empty_labels() {
        assert!("host-1.rack2.dc".parse::<NodeName>().is_ok());
        for bad in ["", ".a", "a..b", "a.", "Host", "a/b"] {
            assert!(bad.parse::<NodeName>().is_err(), "{bad}");
        }
    }

    #[test]
    fn label_keys_and_values() {
        assert!("topology.kubernetes.io/zone".parse::<LabelKey>().is_ok());
        assert!("Rack_1.a".parse::<LabelKey>().is_ok());
        for bad in ["", "/a", "a/", "-a", "a b", "UPPER.Prefix/x"] {
            assert!(bad.parse::<LabelKey>().is_err(), "{bad}");
        }
        assert!("".parse::<LabelValue>().is_ok());
        assert!("a/b".parse::<LabelValue>().is_err());
    }

    #[test]
    fn cidrs_reject_host_bits_and_extreme_prefixes() {
        assert_eq!(
            "10.20.0.0/16".parse::<Cidr>().unwrap().to_string(),
            "10.20.0.0/16"
        );
        let err = "10.20.0.1/16".parse::<Cidr>().unwrap_err();
        assert!(err.0.contains("did you mean 10.20.0.0/16"), "{err}");
        assert!("10.0.0.0/30".parse::<Cidr>().is_err());
        assert!("10.0.0.0/7".parse::<Cidr>().is_err());
        assert!("fd00::/64".parse::<Cidr>().is_ok());
        assert!("nonsense".parse::<Cidr>().is_err());
    }

    #[test]
    fn cidr_overlap_is_symmetric() {
        let a: Cidr = "10.0.0.0/8".parse().unwrap();
        let b: Cidr = "10.20.0.0/16".parse().unwrap();
        let c: Cidr = "192.168.0.0/16".parse().unwrap();
        assert!(a.overlaps(&b) && b.overlaps(&a));
        assert!(!a.overlaps(&c) && !c.overlaps(&a));
    }

    #[test]
    fn master_count_is_auto_or_odd() {
        assert_eq!("auto".parse::<MasterCount>().unwrap(), MasterCount::Auto);
        assert_eq!("3".parse::<MasterCount>().unwrap(), MasterCount::Count(3));
        for bad in ["0", "2", "11", "-1", "three"] {
            assert!(bad.parse::<MasterCount>().is_err(), "{bad}");
        }
        let from_json: MasterCount = serde_json::from_str("5").unwrap();
        assert_eq!(from_json, MasterCount::Count(5));
        assert!(serde_json::from_str::<MasterCount>("4").is_err());
    }

    #[test]
    fn versions() {
        assert!("1.20.2".parse::<KubernetesVersion>().is_ok());
        let built: KubernetesVersion = "1.20.2+qb.1".parse().unwrap();
        assert_eq!((built.release(), built.build()), ((1, 20, 2), Some("qb.1")));
        let plain: KubernetesVersion = "1.21.14".parse().unwrap();
        assert_eq!((plain.release(), plain.build()), ((1, 21, 14), None));
        for bad in [
            "1.20",
            "v1.20.2",
            "2.0.0",
            "1.20.2-rc1",
            "1..2",
            "1.20.2+",
            "1.20.2+qb..1",
            "1.20.2+qb_1",
            "1.20.2+a+b",
            "1.20.2+abcdefghijklmnopqrstuvwxyz",
        ] {
            assert!(bad.parse::<KubernetesVersion>().is_err(), "{bad}");
        }
    }

    #[test]
    fn selectors_match_like_kubernetes() {
        let sel: Selector = "zone=a, rack!=r1,gpu,!maint".parse().unwrap();
        let labels = |pairs: &[(&str, &str)]| -> Labels {
            pairs
                .iter()
                .map(|(k, v)| (k.parse().unwrap(), v.parse().unwrap()))
                .collect()
        };
        assert!(sel.matches(&labels(&[("zone", "a"), ("gpu", "")])));
        assert!(sel.matches(&labels(&[("zone", "a"), ("gpu", "1"), ("rack", "r2")])));
        assert!(!sel.matches(&labels(&[("zone", "a"), ("gpu", ""), ("rack", "r1")])));
        assert!(!sel.matches(&labels(&[("zone", "a"), ("gpu", ""), ("maint", "")])));
        assert!(!sel.matches(&labels(&[("zone", "b"), ("gpu", "")])));
        assert_eq!(sel.to_string(), "zone=a,rack!=r1,gpu,!maint");
        assert!("zone=a,,b".parse::<Selector>().is_err());
        assert!("zone=a b".parse::<Selector>().is_err());
    }
}

/// An error and its sources, `outer: inner: ...`, for logs, reports and problem details (the
/// one walker of `Error::source` chains; `anyhow`'s `{:#}` does the same for its own errors).
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A secret text: a token, a private key, a file that holds one. `Debug` and `Display` show
/// only its length, so it cannot reach a log or an error message by accident; [`Secret::expose`]
/// is the one way to the text. On the wire it is the plain string.
///
/// (The `secrecy` crate's strings do not serialize; its marker for that cannot be implemented
/// for `str` outside it.)
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    /// The text, for the one place that must use it (a file written, a header sent).
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn into_exposed(self) -> String {
        self.0
    }
}

impl From<String> for Secret {
    fn from(text: String) -> Self {
        Self(text)
    }
}

impl From<&str> for Secret {
    fn from(text: &str) -> Self {
        Self(text.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<{} bytes, redacted>)", self.0.len())
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<secret, {} bytes>", self.0.len())
    }
}
