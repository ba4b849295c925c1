//! Extractors whose rejections are problem responses.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use futures_util::StreamExt as _;
use qb_api::ProblemCode;
use serde::Deserialize;
use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess,
    VariantAccess, Visitor,
};

use crate::ApiError;

/// A JSON body. Unknown fields, repeated keys, an array where an object belongs, bad values,
/// wrong content types and oversized bodies are answered with a problem; nothing reaches the
/// handler.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(req.headers()) {
            return Err(ApiError::new(
                ProblemCode::UnsupportedMediaType,
                "expected a body of type application/json",
            ));
        }
        parse(&read_body(req, state).await?).map(Self)
    }
}

/// How much more of a body over the limit is read, at most, before the 413 goes out. Answering
/// while the client still sends ends an HTTP/2 stream with RST_STREAM(NO_ERROR), which the RFC
/// allows but clients such as curl report as a failed request instead of the answer (and over
/// HTTP/1.1 the connection closes under the client's writes).
const DRAIN_BYTES: usize = 16 << 20;
/// How long, at most, the rest of a body over the limit is read.
const DRAIN_TIME: Duration = Duration::from_secs(10);

/// The body, within the router's `DefaultBodyLimit`.
async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    // The limit is applied to a reader of the body, so that what follows it stays readable.
    let (parts, body) = req.into_parts();
    let rest = Arc::new(Mutex::new(body.into_data_stream()));
    let reader = Arc::clone(&rest);
    let body = Body::from_stream(futures_util::stream::poll_fn(move |cx| {
        let mut stream = reader.lock().unwrap_or_else(PoisonError::into_inner);
        stream.poll_next_unpin(cx)
    }));
    let rejection = match Bytes::from_request(Request::from_parts(parts, body), state).await {
        Ok(bytes) => return Ok(bytes),
        Err(rejection) => rejection,
    };
    if rejection.status() != StatusCode::PAYLOAD_TOO_LARGE {
        return Err(ApiError::new(
            ProblemCode::MalformedRequest,
            rejection.body_text(),
        ));
    }
    if let Ok(rest) = Arc::try_unwrap(rest) {
        let mut rest = rest.into_inner().unwrap_or_else(PoisonError::into_inner);
        let drain = async {
            let mut read = 0;
            while read < DRAIN_BYTES {
                match rest.next().await {
                    Some(Ok(chunk)) => read += chunk.len(),
                    Some(Err(_)) | None => break,
                }
            }
        };
        let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
    }
    Err(ApiError::new(
        ProblemCode::PayloadTooLarge,
        rejection.body_text(),
    ))
}

/// `T` from a JSON body: its syntax and repeated keys checked first, whatever `T` is; then `T`,
/// with the path to a bad value.
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice::<UniqueKeys>(body).map_err(|e| {
        let code = if e.is_data() {
            ProblemCode::InvalidInput
        } else {
            ProblemCode::MalformedRequest
        };
        ApiError::new(code, e.to_string())
    })?;
    match axum::Json::<Strict<T>>::from_bytes(body) {
        Ok(axum::Json(Strict(v))) => Ok(v),
        Err(rejection) => Err(json_problem(&rejection)),
    }
}

/// `application/json` or `application/<something>+json`, with any parameters.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence
        .strip_prefix("application/")
        .is_some_and(|subtype| subtype == "json" || subtype.ends_with("+json"))
}

fn json_problem(rejection: &JsonRejection) -> ApiError {
    let code = match rejection {
        JsonRejection::JsonDataError(_) => ProblemCode::InvalidInput,
        _ => ProblemCode::MalformedRequest,
    };
    let text = rejection.body_text();
    let detail = text
        .strip_prefix("Failed to deserialize the JSON body into the target type: ")
        .or_else(|| text.strip_prefix("Failed to parse the request body as JSON: "))
        .unwrap_or(&text);
    ApiError::new(code, detail)
}

/// Any JSON value in which no object repeats a key (serde_json would keep the last one, in a
/// map such as a node's labels; serde refuses it only in a struct).
struct UniqueKeys;

impl<'de> Deserialize<'de> for UniqueKeys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UniqueKeys)
    }
}

impl<'de> Visitor<'de> for UniqueKeys {
    type Value = UniqueKeys;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self, A::Error> {
        while seq.next_element::<UniqueKeys>()?.is_some() {}
        Ok(self)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self, A::Error> {
        let mut keys = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if keys.contains(&key) {
                return Err(de::Error::custom(format_args!(
                    "duplicate key {}",
                    qb_api::quote(&key)
                )));
            }
            map.next_value::<UniqueKeys>()?;
            keys.insert(key);
        }
        Ok(self)
    }
}

/// `T`, where only a JSON object stands for a struct: serde_json also reads a struct from an
/// array, field by field, which the API's document does not allow. The wrapper reaches every
/// value `T` deserializes itself; what serde buffers first (a `flatten`ed field, an untagged or
/// internally tagged enum) it sees only as a whole.
struct Strict<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Strict<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        T::deserialize(Strict(d)).map(Strict)
    }
}

macro_rules! forward_deserialize {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {$(
        fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, D::Error> {
            self.0.$method($($arg,)* Strict(visitor))
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Strict<D> {
    type Error = D::Error;

    forward_deserialize! {
        deserialize_any(); deserialize_bool();
        deserialize_i8(); deserialize_i16(); deserialize_i32(); deserialize_i64(); deserialize_i128();
        deserialize_u8(); deserialize_u16(); deserialize_u32(); deserialize_u64(); deserialize_u128();
        deserialize_f32(); deserialize_f64(); deserialize_char(); deserialize_str();
        deserialize_string(); deserialize_bytes(); deserialize_byte_buf(); deserialize_option();
        deserialize_unit(); deserialize_unit_struct(name: &'static str);
        deserialize_newtype_struct(name: &'static str); deserialize_seq();
        deserialize_tuple(len: usize); deserialize_tuple_struct(name: &'static str, len: usize);
        deserialize_map();
        deserialize_enum(name: &'static str, variants: &'static [&'static str]);
        deserialize_identifier(); deserialize_ignored_any();
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_map(Strict(visitor))
    }

    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }
}

macro_rules! forward_visit {
    ($($method:ident($ty:ty);)*) => {$(
        fn $method<E: de::Error>(self, v: $ty) -> Result<V::Value, E> {
            self.0.$method(v)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Strict<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.expecting(f)
    }

    forward_visit! {
        visit_bool(bool); visit_i8(i8); visit_i16(i16); visit_i32(i32); visit_i64(i64);
        visit_i128(i128); visit_u8(u8); visit_u16(u16); visit_u32(u32); visit_u64(u64);
        visit_u128(u128); visit_f32(f32); visit_char(char); visit_str(&str);
        visit_borrowed_str(&'de str); visit_string(String); visit_bytes(&[u8]);
        visit_borrowed_bytes(&'de [u8]); visit_byte_buf(Vec<u8>);
    }

    /// JSON has one kind of number: `2.0` is the integer 2, as the API's document (JSON Schema)
    /// reads it, so an integer field takes it; `2.5` stays a float, which it refuses.
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<V::Value, E> {
        // 2^64 and -2^63 are exact as floats; every whole float in between is an integer.
        const U64_END: f64 = 18_446_744_073_709_551_616.0;
        const I64_MIN: f64 = -9_223_372_036_854_775_808.0;
        if v.fract() == 0.0 && (0.0..U64_END).contains(&v) {
            return self.0.visit_u64(v as u64);
        }
        if v.fract() == 0.0 && (I64_MIN..0.0).contains(&v) {
            return self.0.visit_i64(v as i64);
        }
        self.0.visit_f64(v)
    }

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.0.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.0.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        self.0.visit_some(Strict(d))
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        self.0.visit_newtype_struct(Strict(d))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        self.0.visit_seq(Strict(seq))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.0.visit_map(Strict(map))
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        self.0.visit_enum(Strict(data))
    }
}

impl<'de, T: DeserializeSeed<'de>> DeserializeSeed<'de> for Strict<T> {
    type Value = T::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<T::Value, D::Error> {
        self.0.deserialize(Strict(d))
    }
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Strict<A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        self.0.next_element_seed(Strict(seed))
    }

    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Strict<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        self.0.next_key_seed(Strict(seed))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.0.next_value_seed(Strict(seed))
    }

    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

impl<'de, A: EnumAccess<'de>> EnumAccess<'de> for Strict<A> {
    type Error = A::Error;
    type Variant = Strict<A::Variant>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self::Variant), A::Error> {
        let (value, variant) = self.0.variant_seed(Strict(seed))?;
        Ok((value, Strict(variant)))
    }
}

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for Strict<A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.0.unit_variant()
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        self.0.newtype_variant_seed(Strict(seed))
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        self.0.tuple_variant(len, Strict(visitor))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        // The variant's content as a map, through the same path as a struct.
        self.0.newtype_variant_seed(StructContent(visitor))
    }
}

/// A struct variant's content, read as a struct is.
struct StructContent<V>(V);

impl<'de, V: Visitor<'de>> DeserializeSeed<'de> for StructContent<V> {
    type Value = V::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        d.deserialize_map(Strict(self.0))
    }
}

/// Query parameters; unknown or malformed ones are answered with a problem.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Self(v)),
            Err(rejection) => Err(query_problem(&rejection)),
        }
    }
}

fn query_problem(rejection: &QueryRejection) -> ApiError {
    ApiError::invalid(rejection.body_text())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        inner: Vec<Inner>,
        #[serde(default)]
        maybe: Option<Inner>,
        #[serde(default)]
        map: BTreeMap<String, Inner>,
        #[serde(default)]
        choice: Option<Choice>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Inner {
        x: u32,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "snake_case")]
    enum Choice {
        Plain,
        Point { x: u32 },
    }

    /// The problem's code and detail.
    fn refused(json: &str) -> (ProblemCode, String) {
        let ApiError(problem) = parse::<Outer>(json.as_bytes()).expect_err(json);
        (problem.code, problem.detail)
    }

    #[test]
    fn objects_are_read_as_before() {
        let outer: Outer = parse(
            br#"{"inner": [{"x": 1}], "maybe": {"x": 2}, "map": {"a": {"x": 3}},
                "choice": {"point": {"x": 4}}}"#,
        )
        .expect("a valid body");
        assert_eq!(
            outer,
            Outer {
                inner: vec![Inner { x: 1 }],
                maybe: Some(Inner { x: 2 }),
                map: BTreeMap::from([("a".to_owned(), Inner { x: 3 })]),
                choice: Some(Choice::Point { x: 4 }),
            }
        );
        let plain: Outer = parse(br#"{"inner": [], "choice": "plain"}"#).expect("a valid body");
        assert_eq!(plain.choice, Some(Choice::Plain));
    }

    #[test]
    fn an_array_never_stands_for_an_object() {
        for json in [
            r#"[[{"x": 1}]]"#,
            r#"{"inner": [[1]]}"#,
            r#"{"inner": [], "maybe": [2]}"#,
            r#"{"inner": [], "map": {"a": [3]}}"#,
            r#"{"inner": [], "choice": {"point": [4]}}"#,
        ] {
            let (code, detail) = refused(json);
            assert_eq!(code, ProblemCode::InvalidInput, "{json}");
            assert!(
                detail.contains("invalid type: sequence"),
                "{json}: {detail}"
            );
        }
    }

    #[test]
    fn a_repeated_key_is_refused_in_maps_too() {
        for (json, key) in [
            (r#"{"inner": [], "inner": []}"#, "inner"),
            (
                r#"{"inner": [], "map": {"a": {"x": 1}, "a": {"x": 2}}}"#,
                "a",
            ),
            (r#"{"inner": [{"x": 1, "\u0078": 2}]}"#, "x"),
        ] {
            let (code, detail) = refused(json);
            assert_eq!(code, ProblemCode::InvalidInput, "{json}");
            assert!(
                detail.starts_with(&format!("duplicate key {key:?} at line 1")),
                "{json}: {detail}"
            );
        }
        // The same key in two objects is no repetition.
        let outer: Outer = parse(br#"{"inner": [{"x": 1}, {"x": 2}]}"#).expect("a valid body");
        assert_eq!(outer.inner.len(), 2);
    }

    #[test]
    fn a_whole_float_is_an_integer() {
        let outer: Outer =
            parse(br#"{"inner": [{"x": 2.0}, {"x": 0e3}], "choice": {"point": {"x": 4E0}}}"#)
                .expect("whole floats where integers go");
        assert_eq!(outer.inner, [Inner { x: 2 }, Inner { x: 0 }]);
        assert_eq!(outer.choice, Some(Choice::Point { x: 4 }));
        for (json, why) in [
            (
                r#"{"inner": [{"x": 2.5}]}"#,
                "invalid type: floating point `2.5`",
            ),
            (r#"{"inner": [{"x": -1.0}]}"#, "invalid value: integer `-1`"),
            (
                r#"{"inner": [{"x": 5e9}]}"#,
                "invalid value: integer `5000000000`",
            ),
            (
                r#"{"inner": [{"x": 1e300}]}"#,
                "invalid type: floating point",
            ),
        ] {
            let (code, detail) = refused(json);
            assert_eq!(code, ProblemCode::InvalidInput, "{json}");
            assert!(detail.contains(why), "{json}: {detail}");
        }
    }

    #[test]
    fn syntax_errors_are_malformed_requests() {
        for json in [r#"{"inner": []"#, "not json", r#"{"inner": []} {}"#] {
            assert_eq!(refused(json).0, ProblemCode::MalformedRequest, "{json}");
        }
    }

    #[test]
    fn json_content_types() {
        for (value, json) in [
            ("application/json", true),
            ("Application/JSON; charset=utf-8", true),
            ("application/merge-patch+json", true),
            ("text/json", false),
            ("application/jsonx", false),
            ("", false),
        ] {
            let headers = HeaderMap::from_iter([(
                header::CONTENT_TYPE,
                value.parse().expect("a header value"),
            )]);
            assert_eq!(is_json(&headers), json, "{value}");
        }
        assert!(!is_json(&HeaderMap::new()));
    }
}
