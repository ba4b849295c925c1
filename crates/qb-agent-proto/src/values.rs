//! The plan's values, checked once when a plan is decoded: a plan with a relative path, a path
//! that climbs out with `..`, a service name that is no file name or a malformed digest does
//! not decode, so nothing downstream checks them again.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The error of a value that breaks its rule; the message names the value and the rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(String);

/// An absolute path below `/`, without `..` and without NUL bytes (at most 4096 bytes).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HostPath(String);

impl HostPath {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn as_path(&self) -> &std::path::Path {
        std::path::Path::new(&self.0)
    }
}

impl TryFrom<String> for HostPath {
    type Error = InvalidValue;
    fn try_from(path: String) -> Result<Self, InvalidValue> {
        let p = std::path::Path::new(&path);
        let fine = p.is_absolute()
            && path.len() <= 4096
            && !path.contains('\0')
            && p.components().all(|c| c != std::path::Component::ParentDir)
            && p.components()
                .any(|c| matches!(c, std::path::Component::Normal(_)));
        if fine {
            Ok(Self(path))
        } else {
            Err(InvalidValue(format!(
                "{} must be an absolute path below / without \"..\"",
                qb_api::quote(&path)
            )))
        }
    }
}

/// A service's or task's name: `[a-z0-9-]`, 1 to 63 characters. It names the service's log
/// and record files, so it is a file name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ServiceName(String);

impl ServiceName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ServiceName {
    type Error = InvalidValue;
    fn try_from(name: String) -> Result<Self, InvalidValue> {
        let fine = (1..=63).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if fine {
            Ok(Self(name))
        } else {
            Err(InvalidValue(format!(
                "invalid service name {}: expected 1 to 63 of a-z, 0-9 and -",
                qb_api::quote(&name)
            )))
        }
    }
}

/// A SHA-256 digest: 64 lowercase hex digits.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Sha256Hex(String);

impl Sha256Hex {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Sha256Hex {
    type Error = InvalidValue;
    fn try_from(hex: String) -> Result<Self, InvalidValue> {
        let fine = hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if fine {
            Ok(Self(hex))
        } else {
            Err(InvalidValue(format!(
                "{} is not a lowercase hex SHA-256",
                qb_api::quote(&hex)
            )))
        }
    }
}

/// The string forms, parsing, comparison with `&str` and borrowing as `str` of each value.
macro_rules! string_value {
    ($($ty:ident),*) => {$(
        impl From<$ty> for String {
            fn from(v: $ty) -> String {
                v.0
            }
        }

        impl TryFrom<&str> for $ty {
            type Error = InvalidValue;
            fn try_from(s: &str) -> Result<Self, InvalidValue> {
                Self::try_from(s.to_owned())
            }
        }

        impl std::str::FromStr for $ty {
            type Err = InvalidValue;
            fn from_str(s: &str) -> Result<Self, InvalidValue> {
                Self::try_from(s.to_owned())
            }
        }

        impl std::ops::Deref for $ty {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $ty {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $ty {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<String> for $ty {
            fn eq(&self, other: &String) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<&str> for $ty {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    )*};
}

string_value!(HostPath, ServiceName, Sha256Hex);

impl AsRef<std::path::Path> for HostPath {
    fn as_ref(&self) -> &std::path::Path {
        self.as_path()
    }
}

impl AsRef<std::ffi::OsStr> for HostPath {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_absolute_below_the_root_without_climbing() {
        for good in ["/etc/qb/pki/ca.crt", "/var/lib/qb/", "/a/./b"] {
            assert_eq!(HostPath::try_from(good).unwrap(), good);
        }
        for bad in ["", "/", "etc/qb", "./x", "/qb/../../etc/shadow", "/a\0b"] {
            let e = HostPath::try_from(bad).unwrap_err();
            assert!(
                e.to_string().contains("absolute path below /"),
                "{bad:?}: {e}"
            );
        }
        let long = format!("/{}", "a".repeat(4096));
        assert!(HostPath::try_from(long).is_err());
    }

    #[test]
    fn service_names_are_file_names() {
        for good in [
            "etcd",
            "kube-apiserver",
            "import-image-busybox",
            &"a".repeat(63),
        ] {
            assert_eq!(ServiceName::try_from(good).unwrap(), good);
        }
        for bad in ["", "Etcd", "a/b", "..", "a b", &"a".repeat(64)] {
            assert!(ServiceName::try_from(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn digests_are_lowercase_hex() {
        let good = "a".repeat(64);
        assert_eq!(Sha256Hex::try_from(good.as_str()).unwrap(), good.as_str());
        for bad in ["a".repeat(63), "A".repeat(64), "g".repeat(64)] {
            assert!(Sha256Hex::try_from(bad.as_str()).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_bad_value_does_not_decode() {
        let e = serde_json::from_str::<HostPath>(r#""/qb/../etc/passwd""#).unwrap_err();
        assert!(e.to_string().contains("absolute path below /"), "{e}");
        let path: HostPath = serde_json::from_str(r#""/etc/qb/x""#).unwrap();
        assert_eq!(serde_json::to_string(&path).unwrap(), r#""/etc/qb/x""#);
    }
}
