//! Canonical bytes straight from a `Serialize` value, without a `serde_json::Value` in between.
//!
//! Everything but an object streams: scalars and arrays are written as they come. An object's
//! members must be sorted by name, so each object writes its members' values to a scratch
//! buffer and emits them sorted when it ends. The bytes equal those of [`write_canonical`]
//! applied to `serde_json::to_value(value)` (a property test pins this), including the
//! handling of numbers that are not safe integers, which go through the same path.

use super::{utf16_order, write_canonical, write_str};
use serde::ser::{self, Serialize};
use serde_json::{Error, Value};
use std::borrow::Cow;
use std::ops::Range;

/// The struct name under which serde_json's `RawValue` serializes its text, as its one member
/// (serde_json's own `to_value` recognizes it the same way).
const RAW_VALUE: &str = "$serde_json::private::RawValue";

/// Appends the canonical form of `value` (as serde_json would serialize it) to `out`.
pub fn write_serialize<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), Error> {
    value.serialize(Canon { out })
}

struct Canon<'a> {
    out: &'a mut Vec<u8>,
}

/// A number, as `write_canonical` writes it: safe integers as they are, others in their
/// ECMAScript form.
fn number(out: &mut Vec<u8>, v: impl Into<Value>) -> Result<(), Error> {
    write_canonical(&v.into(), out)
}

fn out_of_range() -> Error {
    ser::Error::custom("number out of range")
}

impl<'a> ser::Serializer for Canon<'a> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Array<'a>;
    type SerializeTuple = Array<'a>;
    type SerializeTupleStruct = Array<'a>;
    type SerializeTupleVariant = Array<'a>;
    type SerializeMap = Object<'a>;
    type SerializeStruct = Object<'a>;
    type SerializeStructVariant = Object<'a>;

    fn serialize_bool(self, v: bool) -> Result<(), Error> {
        self.out
            .extend_from_slice(if v { b"true" } else { b"false" });
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Result<(), Error> {
        number(self.out, v)
    }
    fn serialize_i16(self, v: i16) -> Result<(), Error> {
        number(self.out, v)
    }
    fn serialize_i32(self, v: i32) -> Result<(), Error> {
        number(self.out, v)
    }
    fn serialize_i64(self, v: i64) -> Result<(), Error> {
        number(self.out, v)
    }
    fn serialize_i128(self, v: i128) -> Result<(), Error> {
        // As serde_json's `to_value`: any 64-bit integer, else an error.
        match (i64::try_from(v), u64::try_from(v)) {
            (Ok(i), _) => number(self.out, i),
            (_, Ok(u)) => number(self.out, u),
            _ => Err(out_of_range()),
        }
    }
    fn serialize_u8(self, v: u8) -> Result<(), Error> {
        number(self.out, v)
    }
    fn serialize_u16(self, v: u16) -> Result<(), Error> {
        number(self.out, v)
    }
    fn serialize_u32(self, v: u32) -> Result<(), Error> {
        number(self.out, v)
    }
    fn serialize_u64(self, v: u64) -> Result<(), Error> {
        number(self.out, v)
    }
    fn serialize_u128(self, v: u128) -> Result<(), Error> {
        u64::try_from(v)
            .map_err(|_| out_of_range())
            .and_then(|u| number(self.out, u))
    }
    fn serialize_f32(self, v: f32) -> Result<(), Error> {
        number(self.out, v)
    }
    fn serialize_f64(self, v: f64) -> Result<(), Error> {
        number(self.out, v)
    }
    fn serialize_char(self, v: char) -> Result<(), Error> {
        write_str(v.encode_utf8(&mut [0; 4]), self.out)
    }
    fn serialize_str(self, v: &str) -> Result<(), Error> {
        write_str(v, self.out)
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), Error> {
        // serde_json writes bytes as an array of numbers.
        let mut seq = ser::Serializer::serialize_seq(self, Some(v.len()))?;
        for b in v {
            ser::SerializeSeq::serialize_element(&mut seq, b)?;
        }
        ser::SerializeSeq::end(seq)
    }
    fn serialize_none(self) -> Result<(), Error> {
        self.serialize_unit()
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Error> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), Error> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), Error> {
        self.serialize_unit()
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<(), Error> {
        write_str(variant, self.out)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        open_variant(self.out, variant)?;
        value.serialize(Canon { out: self.out })?;
        self.out.push(b'}');
        Ok(())
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Array<'a>, Error> {
        self.out.push(b'[');
        Ok(Array {
            out: self.out,
            first: true,
            in_variant: false,
        })
    }
    fn serialize_tuple(self, len: usize) -> Result<Array<'a>, Error> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(self, _: &'static str, len: usize) -> Result<Array<'a>, Error> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Array<'a>, Error> {
        open_variant(self.out, variant)?;
        let mut array = self.serialize_seq(None)?;
        array.in_variant = true;
        Ok(array)
    }
    fn serialize_map(self, len: Option<usize>) -> Result<Object<'a>, Error> {
        Ok(Object::new(self.out, len.unwrap_or(0), false))
    }
    fn serialize_struct(self, name: &'static str, len: usize) -> Result<Object<'a>, Error> {
        let mut object = Object::new(self.out, len, false);
        object.raw = name == RAW_VALUE;
        Ok(object)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Object<'a>, Error> {
        open_variant(self.out, variant)?;
        Ok(Object::new(self.out, len, true))
    }
}

/// An enum variant with data is `{"<variant>":<data>}`, a one-member object.
fn open_variant(out: &mut Vec<u8>, variant: &str) -> Result<(), Error> {
    out.push(b'{');
    write_str(variant, out)?;
    out.push(b':');
    Ok(())
}

struct Array<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
    /// Whether the array is a variant's data, closed by one more `}`.
    in_variant: bool,
}

impl Array<'_> {
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        value.serialize(Canon { out: self.out })
    }

    fn close(self) -> Result<(), Error> {
        self.out.push(b']');
        if self.in_variant {
            self.out.push(b'}');
        }
        Ok(())
    }
}

/// The four array-like serde traits, each forwarding to [`Array::element`] and
/// [`Array::close`].
macro_rules! array_like {
    ($($trait:ident::$method:ident),*) => {$(
        impl ser::$trait for Array<'_> {
            type Ok = ();
            type Error = Error;
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
                self.element(value)
            }
            fn end(self) -> Result<(), Error> {
                self.close()
            }
        }
    )*};
}

array_like!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

/// An object's members so far: each name with where its value lies in `values`.
struct Object<'a> {
    out: &'a mut Vec<u8>,
    values: Vec<u8>,
    members: Vec<(Cow<'static, str>, Range<usize>)>,
    /// A map's key, between `serialize_key` and `serialize_value`.
    key: Option<String>,
    /// Whether the object is a variant's data, closed by one more `}`.
    in_variant: bool,
    /// Whether this is a `RawValue`, whose one member is JSON text.
    raw: bool,
}

impl<'a> Object<'a> {
    fn new(out: &'a mut Vec<u8>, len: usize, in_variant: bool) -> Self {
        Self {
            out,
            values: Vec::with_capacity(len * 16),
            members: Vec::with_capacity(len),
            key: None,
            in_variant,
            raw: false,
        }
    }

    fn member<T: Serialize + ?Sized>(
        &mut self,
        name: Cow<'static, str>,
        value: &T,
    ) -> Result<(), Error> {
        let start = self.values.len();
        value.serialize(Canon {
            out: &mut self.values,
        })?;
        self.members.push((name, start..self.values.len()));
        Ok(())
    }

    fn close(mut self) -> Result<(), Error> {
        if self.raw {
            // JSON text kept as it came: canonical once parsed.
            let Some((_, range)) = self.members.first() else {
                return Err(ser::Error::custom("a raw value without its text"));
            };
            let text: String = serde_json::from_slice(&self.values[range.clone()])?;
            return write_canonical(&serde_json::from_str(&text)?, self.out);
        }
        // Stable, so that of members with one name the last written comes last, and wins, as
        // in a `serde_json::Map`.
        self.members.sort_by(|a, b| utf16_order(&a.0, &b.0));
        self.out.push(b'{');
        let mut first = true;
        for (i, (name, range)) in self.members.iter().enumerate() {
            if self.members.get(i + 1).is_some_and(|next| next.0 == *name) {
                continue;
            }
            if !first {
                self.out.push(b',');
            }
            first = false;
            write_str(name, self.out)?;
            self.out.push(b':');
            self.out.extend_from_slice(&self.values[range.clone()]);
        }
        self.out.push(b'}');
        if self.in_variant {
            self.out.push(b'}');
        }
        Ok(())
    }
}

impl ser::SerializeMap for Object<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Error> {
        self.key = Some(key.serialize(KeyName)?);
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        let key = self
            .key
            .take()
            .ok_or_else(|| ser::Error::custom("a map value without a key"))?;
        self.member(Cow::Owned(key), value)
    }
    fn end(self) -> Result<(), Error> {
        self.close()
    }
}

/// The two struct-like serde traits, each forwarding to [`Object::member`] and
/// [`Object::close`].
macro_rules! struct_like {
    ($($trait:ident),*) => {$(
        impl ser::$trait for Object<'_> {
            type Ok = ();
            type Error = Error;
            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                name: &'static str,
                value: &T,
            ) -> Result<(), Error> {
                self.member(Cow::Borrowed(name), value)
            }
            fn end(self) -> Result<(), Error> {
                self.close()
            }
        }
    )*};
}

struct_like!(SerializeStruct, SerializeStructVariant);

/// A map key: only strings (and chars) name members. serde_json would also turn integer and
/// boolean keys into names; no event has such a map, so they are refused rather than mirrored.
struct KeyName;

fn key_must_be_a_string() -> Error {
    ser::Error::custom("key must be a string")
}

macro_rules! refuse {
    ($($name:ident($($arg:ty),*) -> $ok:ty;)*) => {
        $(fn $name(self, $(_: $arg),*) -> Result<$ok, Error> {
            Err(key_must_be_a_string())
        })*
    };
}

impl ser::Serializer for KeyName {
    type Ok = String;
    type Error = Error;
    type SerializeSeq = ser::Impossible<String, Error>;
    type SerializeTuple = ser::Impossible<String, Error>;
    type SerializeTupleStruct = ser::Impossible<String, Error>;
    type SerializeTupleVariant = ser::Impossible<String, Error>;
    type SerializeMap = ser::Impossible<String, Error>;
    type SerializeStruct = ser::Impossible<String, Error>;
    type SerializeStructVariant = ser::Impossible<String, Error>;

    fn serialize_str(self, v: &str) -> Result<String, Error> {
        Ok(v.to_owned())
    }
    fn serialize_char(self, v: char) -> Result<String, Error> {
        Ok(v.to_string())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<String, Error> {
        value.serialize(self)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<String, Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<String, Error> {
        Err(key_must_be_a_string())
    }
    refuse! {
        serialize_bool(bool) -> String;
        serialize_i8(i8) -> String;
        serialize_i16(i16) -> String;
        serialize_i32(i32) -> String;
        serialize_i64(i64) -> String;
        serialize_i128(i128) -> String;
        serialize_u8(u8) -> String;
        serialize_u16(u16) -> String;
        serialize_u32(u32) -> String;
        serialize_u64(u64) -> String;
        serialize_u128(u128) -> String;
        serialize_f32(f32) -> String;
        serialize_f64(f64) -> String;
        serialize_bytes(&[u8]) -> String;
        serialize_none() -> String;
        serialize_unit() -> String;
        serialize_unit_struct(&'static str) -> String;
        serialize_unit_variant(&'static str, u32, &'static str) -> String;
        serialize_seq(Option<usize>) -> Self::SerializeSeq;
        serialize_tuple(usize) -> Self::SerializeTuple;
        serialize_tuple_struct(&'static str, usize) -> Self::SerializeTupleStruct;
        serialize_tuple_variant(&'static str, u32, &'static str, usize) -> Self::SerializeTupleVariant;
        serialize_map(Option<usize>) -> Self::SerializeMap;
        serialize_struct(&'static str, usize) -> Self::SerializeStruct;
        serialize_struct_variant(&'static str, u32, &'static str, usize) -> Self::SerializeStructVariant;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;
    use std::collections::BTreeMap;

    fn through_the_tree<T: Serialize>(v: &T) -> String {
        let mut out = Vec::new();
        write_canonical(&serde_json::to_value(v).unwrap(), &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn direct<T: Serialize>(v: &T) -> String {
        let mut out = Vec::new();
        write_serialize(v, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[derive(Serialize)]
    enum Shape {
        Unit,
        Newtype(u8),
        Tuple(i8, bool),
        Struct { z: (), a: Option<char> },
    }

    #[derive(Serialize)]
    struct Everything<'a> {
        zeta: Vec<Shape>,
        #[serde(rename = "\u{e000}")]
        private_use: f32,
        #[serde(rename = "\u{1f600}")]
        astral: f64,
        #[serde(skip_serializing_if = "Option::is_none")]
        skipped: Option<u8>,
        #[serde(with = "serde_bytes_as_seq")]
        bytes: &'a [u8],
        big: u64,
        small: i128,
        names: BTreeMap<String, i64>,
        raw: Box<serde_json::value::RawValue>,
        alpha: &'a str,
    }

    /// Bytes through `serialize_bytes`, as serde_bytes would.
    mod serde_bytes_as_seq {
        pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(v)
        }
    }

    #[test]
    fn every_serde_shape_comes_out_as_through_the_tree() {
        let v = Everything {
            zeta: vec![
                Shape::Unit,
                Shape::Newtype(7),
                Shape::Tuple(-1, true),
                Shape::Struct {
                    z: (),
                    a: Some('"'),
                },
            ],
            private_use: 0.1,
            astral: 1e21,
            skipped: None,
            bytes: &[0, 255],
            big: u64::MAX,
            small: -(1 << 60),
            names: [("b".into(), 2), ("a\n".into(), 1)].into(),
            raw: serde_json::value::RawValue::from_string(r#"{ "y": 1.50, "x": [ 2e0 ] }"#.into())
                .unwrap(),
            alpha: "\u{7f}\u{1f}é",
        };
        assert_eq!(direct(&v), through_the_tree(&v));
    }

    #[test]
    fn the_last_of_members_with_one_name_wins_as_in_a_map() {
        #[derive(Serialize)]
        struct Inner {
            a: u8,
        }
        #[derive(Serialize)]
        struct Outer {
            a: u8,
            #[serde(flatten)]
            inner: Inner,
        }
        let v = Outer {
            a: 1,
            inner: Inner { a: 2 },
        };
        assert_eq!(direct(&v), "{\"a\":2}");
        assert_eq!(direct(&v), through_the_tree(&v));
    }

    #[test]
    fn numbers_serde_json_cannot_hold_are_refused() {
        assert!(write_serialize(&(u128::MAX), &mut Vec::new()).is_err());
        assert!(write_serialize(&BTreeMap::from([(1, 2)]), &mut Vec::new()).is_err());
    }
}
