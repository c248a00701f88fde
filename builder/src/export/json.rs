//! Canonical JSON for image documents: struct fields keep the order oci-spec declares them in,
//! while objects that are maps in the Go types (labels, annotations, exposed ports, volumes) are
//! sorted by key, as Go's encoding/json writes them. `HashMap` iteration order never leaks out.

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq, Serializer};

/// Keys whose values are maps in the Go image-spec types.
const MAP_KEYS: &[&str] = &["Labels", "ExposedPorts", "Volumes", "annotations"];

/// A JSON value whose objects keep their member order.
pub(crate) enum Ordered {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<Ordered>),
    Object(Vec<(String, Ordered)>),
}

/// Serialises `value` canonically (compact, no trailing newline).
pub(crate) fn to_canonical_vec<T: serde::Serialize>(value: &T) -> serde_json::Result<Vec<u8>> {
    let mut ordered = Ordered::from_serialize(value)?;
    sort_maps(&mut ordered, false);
    serde_json::to_vec(&ordered)
}

impl Ordered {
    /// `value` as serde writes it, member order kept (a `serde_json::Value` without the
    /// `preserve_order` feature arrives sorted; a struct arrives in declaration order).
    pub(crate) fn from_serialize<T: serde::Serialize + ?Sized>(
        value: &T,
    ) -> serde_json::Result<Ordered> {
        serde_json::from_slice(&serde_json::to_vec(value)?)
    }

    pub(crate) fn string(s: impl Into<String>) -> Ordered {
        Ordered::String(s.into())
    }

    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Ordered::String(s) => Some(s),
            _ => None,
        }
    }

    pub(crate) fn is_object(&self) -> bool {
        matches!(self, Ordered::Object(_))
    }

    /// The member `key` of an object.
    pub(crate) fn get(&self, key: &str) -> Option<&Ordered> {
        match self {
            Ordered::Object(members) => members.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The items of an array (none for anything else, `null` included).
    pub(crate) fn items_mut(&mut self) -> &mut [Ordered] {
        match self {
            Ordered::Array(items) => items,
            _ => &mut [],
        }
    }

    pub(crate) fn items(&self) -> &[Ordered] {
        match self {
            Ordered::Array(items) => items,
            _ => &[],
        }
    }

    pub(crate) fn get_mut(&mut self, key: &str) -> Option<&mut Ordered> {
        match self {
            Ordered::Object(members) => members.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Replaces member `key` of an object in place; a new member goes first, which is where the OCI
    /// structs declare `created`, the only key added this way.
    pub(crate) fn set(&mut self, key: &str, value: Ordered) {
        if let Ordered::Object(members) = self {
            match members.iter_mut().find(|(k, _)| k == key) {
                Some((_, v)) => *v = value,
                None => members.insert(0, (key.to_string(), value)),
            }
        }
    }
}

fn sort_maps(v: &mut Ordered, is_map: bool) {
    match v {
        Ordered::Array(items) => items.iter_mut().for_each(|i| sort_maps(i, false)),
        Ordered::Object(members) => {
            if is_map {
                members.sort_by(|a, b| a.0.cmp(&b.0));
            }
            for (k, m) in members.iter_mut() {
                sort_maps(m, !is_map && MAP_KEYS.contains(&k.as_str()));
            }
        }
        _ => {}
    }
}

impl serde::Serialize for Ordered {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Ordered::Null => s.serialize_unit(),
            Ordered::Bool(b) => s.serialize_bool(*b),
            Ordered::Number(n) => n.serialize(s),
            Ordered::String(v) => s.serialize_str(v),
            Ordered::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for i in items {
                    seq.serialize_element(i)?;
                }
                seq.end()
            }
            Ordered::Object(members) => {
                let mut map = s.serialize_map(Some(members.len()))?;
                for (k, v) in members {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

impl<'de> serde::Deserialize<'de> for Ordered {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Ordered;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Ordered, E> {
                Ok(Ordered::Null)
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<Ordered, E> {
                Ok(Ordered::Bool(b))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Ordered, E> {
                Ok(Ordered::Number(n.into()))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Ordered, E> {
                Ok(Ordered::Number(n.into()))
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Ordered, E> {
                serde_json::Number::from_f64(n)
                    .map(Ordered::Number)
                    .ok_or_else(|| E::custom("non-finite number"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Ordered, E> {
                Ok(Ordered::String(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Ordered, E> {
                Ok(Ordered::String(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Ordered, A::Error> {
                let mut items = Vec::new();
                while let Some(i) = a.next_element()? {
                    items.push(i);
                }
                Ok(Ordered::Array(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Ordered, A::Error> {
                let mut members = Vec::new();
                while let Some((k, v)) = a.next_entry::<String, Ordered>()? {
                    members.push((k, v));
                }
                Ok(Ordered::Object(members))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn fields_keep_order_and_maps_sort() {
        let text = r#"{"z":1,"config":{"Labels":{"b":"2","a":"1"},"Env":["B=1","A=2"]},"a":{"y":1,"x":2}}"#;
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        let plain: super::Ordered = serde_json::from_str(text).unwrap();
        let out = super::to_canonical_vec(&plain).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"z":1,"config":{"Labels":{"a":"1","b":"2"},"Env":["B=1","A=2"]},"a":{"y":1,"x":2}}"#
        );
        assert!(v.is_object());
    }
}
