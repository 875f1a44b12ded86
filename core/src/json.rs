//! MessagePack values as JSON (feature `json`): how the `dtasks` command line and the HTTP
//! routes of `dtasks-axum` show arguments, results and event values.
//!
//! dtasks encodes values with MessagePack, structs compactly as arrays of their fields, so
//! a struct shows as a JSON array. Byte strings show as arrays of numbers, map keys that
//! are not strings as their JSON text, extensions as `{"ext": type, "data": [bytes]}`, and
//! floats JSON cannot hold (NaN, infinities) as `null`.
//!
//! ```
//! use serde_json::json;
//!
//! #[derive(serde::Serialize)]
//! struct Order {
//!     id: u32,
//!     paid: bool,
//! }
//! let bytes = rmp_serde::to_vec(&Order { id: 7, paid: true }).unwrap();
//! assert_eq!(dtasks::json::msgpack_to_json(&bytes).unwrap(), json!([7, true]));
//! assert!(dtasks::json::msgpack_to_json(&[0x92, 0x01]).unwrap_err().is_bad_input());
//! ```

use serde_json::{json, Map, Value};

use crate::error::Error;

/// The MessagePack value `bytes` holds, as JSON; [`Error::is_bad_input`] when the bytes
/// are not exactly one MessagePack value. A reference to a value stored out of band
/// ([`PayloadRef`](crate::store::PayloadRef)) shows as
/// `{"payload": {"key": .., "len": ..}}`: the value itself is in the payload store.
pub fn msgpack_to_json(bytes: &[u8]) -> Result<Value, Error> {
    if let Some(r) = crate::store::PayloadRef::decode(bytes) {
        return Ok(json!({ "payload": { "key": r.key(), "len": r.len() } }));
    }
    let mut rd = bytes;
    let v = rmpv::decode::read_value(&mut rd)
        .map_err(|e| Error::invalid(format!("not a MessagePack value: {e}")))?;
    if !rd.is_empty() {
        return Err(Error::invalid(format!(
            "{} bytes after the MessagePack value",
            rd.len()
        )));
    }
    Ok(value_to_json(v))
}

/// A decoded MessagePack value as JSON (see the [module docs](self)).
pub fn value_to_json(v: rmpv::Value) -> Value {
    use rmpv::Value as M;
    match v {
        M::Nil => Value::Null,
        M::Boolean(b) => Value::Bool(b),
        M::Integer(i) => match (i.as_u64(), i.as_i64()) {
            (Some(u), _) => Value::from(u),
            (None, Some(s)) => Value::from(s),
            (None, None) => Value::Null,
        },
        M::F32(f) => serde_json::Number::from_f64(f64::from(f)).map_or(Value::Null, Value::Number),
        M::F64(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
        M::String(s) => Value::String(match s.into_str() {
            Some(s) => s,
            None => "<not UTF-8>".to_string(),
        }),
        M::Binary(b) => Value::Array(b.into_iter().map(Value::from).collect()),
        M::Array(items) => Value::Array(items.into_iter().map(value_to_json).collect()),
        M::Map(pairs) => {
            let mut map = Map::new();
            for (k, v) in pairs {
                let key = match value_to_json(k) {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                map.insert(key, value_to_json(v));
            }
            Value::Object(map)
        }
        M::Ext(ty, data) => json!({ "ext": ty, "data": data }),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::msgpack_to_json;

    #[test]
    fn any_msgpack_has_a_json_form() {
        let ok: Result<String, String> = Ok("pay-17".into());
        let bytes = rmp_serde::to_vec(&ok).unwrap();
        assert_eq!(msgpack_to_json(&bytes).unwrap(), json!({"Ok": "pay-17"}));
        let bytes = rmp_serde::to_vec(&serde_bytes::ByteBuf::from(vec![1u8, 2])).unwrap();
        assert_eq!(msgpack_to_json(&bytes).unwrap(), json!([1, 2]));
        let map: std::collections::BTreeMap<u32, &str> = [(1, "a")].into();
        let bytes = rmp_serde::to_vec(&map).unwrap();
        assert_eq!(msgpack_to_json(&bytes).unwrap(), json!({"1": "a"}));
        // Truncated: an array of two with one item; and a value with bytes after it.
        assert!(msgpack_to_json(&[0x92, 0x01]).unwrap_err().is_bad_input());
        assert!(msgpack_to_json(&[0x01, 0x02]).unwrap_err().is_bad_input());
    }
}
