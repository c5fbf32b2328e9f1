//! How everything that is stored or sent between processes is encoded, and
//! how that encoding may change.
//!
//! # The rule
//!
//! Raft log entries, the state machine, snapshots and every QUIC message are
//! MessagePack with **named** struct fields and **named** enum variants
//! ([`encode`], [`decode`]): a field or a variant is identified by its serde
//! name, never by its position. So:
//!
//! - a new field is added with `#[serde(default)]`: bytes written before it
//!   existed still decode (the field takes its default), and an older reader
//!   skips it;
//! - a new variant may be added anywhere; an older reader refuses only the
//!   messages that use it (gate those on the peer's protocol version);
//! - a name is never changed or reused: rename the Rust item and keep the
//!   wire name with `#[serde(rename = "...")]`;
//! - wire and stored types carry no `deny_unknown_fields` (strictness for
//!   operators' JSON is checked at the admin edge instead, see
//!   [`crate::strict`]), or newer peers could not add fields.
//!
//! Golden-bytes tests (`tests/golden/` of this crate and of the coordinator)
//! pin the encoding of a sample of every type: a change that alters those
//! bytes fails them, and bytes committed by earlier versions must keep
//! decoding forever.
//!
//! # Versions
//!
//! - [`PROTOCOL_VERSION`] 1 was postcard (positional). Version 2 is this
//!   encoding. The [`crate::wire::Hello`] frame alone stays postcard, so a
//!   process of any version can read any other's hello and give a clear
//!   version error.
//! - Stores written as `gantry-raft-store/1` (postcard) are migrated on open
//!   by the coordinator, from the frozen definitions in [`v1`].

#[doc(hidden)]
pub mod samples;
pub mod v1;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Deepest nesting [`decode`] accepts.
pub const MAX_DEPTH: usize = 64;

/// Why bytes did not encode or decode.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("does not encode: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("does not decode: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
}

/// Encodes `value` (MessagePack, named fields and variants).
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, SchemaError> {
    let mut out = Vec::new();
    encode_into(value, &mut out)?;
    Ok(out)
}

/// Appends the encoding of `value` to `out`.
pub fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), SchemaError> {
    let mut ser = rmp_serde::Serializer::new(out).with_struct_map();
    value.serialize(&mut ser)?;
    Ok(())
}

/// Decodes bytes written by [`encode`] (by this or any earlier version 2+).
/// Trailing bytes are refused: they would mean the reader and writer
/// disagree about the message.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, SchemaError> {
    let mut de = rmp_serde::Deserializer::new(std::io::Cursor::new(bytes));
    // Deep enough for every Gantry type, shallow enough that hostile nesting
    // cannot exhaust a task's stack.
    de.set_max_depth(MAX_DEPTH);
    let value = T::deserialize(&mut de)?;
    let used = usize::try_from(de.position()).unwrap_or(usize::MAX);
    if used != bytes.len() {
        return Err(SchemaError::Decode(rmp_serde::decode::Error::Syntax(format!(
            "{} trailing bytes after the message",
            bytes.len().saturating_sub(used)
        ))));
    }
    Ok(value)
}

/// Lowercase hex of `bytes`, as golden files hold them.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of a hex string (whitespace ignored); `None` if it is not hex.
pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    digits
        .chunks(2)
        .map(|pair| {
            let s = std::str::from_utf8(pair).ok()?;
            u8::from_str_radix(s, 16).ok()
        })
        .collect()
}

/// Checks `value` against the golden file `dir/name.hex`: its encoding must
/// equal the file, and the file must decode back to `value`. With
/// `GANTRY_BLESS=1` a missing file is written instead (never overwritten:
/// a committed golden is a promise).
///
/// For tests; panics with what differs.
#[doc(hidden)]
pub fn check_golden<T>(dir: &std::path::Path, name: &str, value: &T)
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let path = dir.join(format!("{name}.hex"));
    let bytes = match encode(value) {
        Ok(b) => b,
        Err(e) => panic!("{name}: {e}"),
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(_) if std::env::var_os("GANTRY_BLESS").is_some() => {
            if let Err(e) =
                std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&path, to_hex(&bytes) + "\n"))
            {
                panic!("{}: {e}", path.display());
            }
            return;
        }
        Err(e) => panic!("{}: {e} (run with GANTRY_BLESS=1 to write a new golden)", path.display()),
    };
    let Some(golden) = from_hex(&text) else { panic!("{}: not hex", path.display()) };
    match decode::<T>(&golden) {
        Ok(back) => assert_eq!(&back, value, "{name}: the golden bytes decode to something else"),
        Err(e) => panic!("{name}: the golden bytes no longer decode: {e}"),
    }
    assert_eq!(
        to_hex(&bytes),
        to_hex(&golden),
        "{name}: the encoding changed. A compatible change (a new defaulted field) needs a new \
         golden next to the old one, never an edited one; see gantry_common::schema"
    );
}

/// Checks that the golden file `dir/name.hex` (written by an earlier version)
/// still decodes, and returns the value.
#[doc(hidden)]
pub fn decode_golden<T: DeserializeOwned>(dir: &std::path::Path, name: &str) -> T {
    let path = dir.join(format!("{name}.hex"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let Some(golden) = from_hex(&text) else { panic!("{}: not hex", path.display()) };
    decode(&golden).unwrap_or_else(|e| panic!("{name}: committed bytes no longer decode: {e}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Shape {
        Dot,
        Circle { radius: u32 },
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Old {
        name: String,
        shapes: Vec<Shape>,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct New {
        #[serde(default)]
        added: Option<u64>,
        shapes: Vec<Shape>,
        name: String,
    }

    #[test]
    fn fields_are_named_so_adding_and_reordering_is_compatible() {
        let old = Old { name: "x".into(), shapes: vec![Shape::Dot, Shape::Circle { radius: 3 }] };
        let bytes = encode(&old).unwrap();
        let new: New = decode(&bytes).unwrap();
        assert_eq!(new, New { added: None, shapes: old.shapes, name: "x".into() });
        let back: Old = decode(&encode(&New { added: Some(9), ..new }).unwrap()).unwrap();
        assert_eq!(back.name, "x");
    }

    #[test]
    fn variants_are_named() {
        let bytes = encode(&Shape::Dot).unwrap();
        assert_eq!(to_hex(&bytes), "a3446f74", "the unit variant is its name as a string");
    }

    #[test]
    fn trailing_bytes_and_garbage_are_refused() {
        let mut bytes = encode(&Shape::Dot).unwrap();
        bytes.push(0);
        assert!(decode::<Shape>(&bytes).is_err());
        assert!(decode::<Old>(&[0xff, 0x00]).is_err());
        assert!(decode::<Old>(&[]).is_err());
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(from_hex(&to_hex(&[0, 1, 0xab, 0xff])).unwrap(), vec![0, 1, 0xab, 0xff]);
        assert_eq!(from_hex("0a 0b\n"), Some(vec![10, 11]));
        assert_eq!(from_hex("0"), None);
        assert_eq!(from_hex("zz"), None);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = decode::<Old>(&bytes);
            let _ = decode::<crate::wire::AgentRequest>(&bytes);
            let _ = decode::<crate::api::ApiRequest>(&bytes);
        }
    }
}
