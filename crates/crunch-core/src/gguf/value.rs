//! GGUF metadata values: the 13 value types, including nested arrays.
//!
//! Arrays are typed vectors ([`Array`]), not vectors of [`Value`]s: an array of a million `u8`
//! takes a million bytes, as in the file, where a `Value` per element took 32. Arrays of strings keep
//! all bytes in one buffer with an end offset per string ([`Strings`]), which costs what the 8-byte
//! length prefixes cost in the file.

use std::fmt;

/// The type code of a metadata value, as stored in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl ValueType {
    /// The value type for a code, or `None` if unknown.
    pub fn from_code(code: u32) -> Option<Self> {
        use ValueType::*;
        Some(match code {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// Bytes of a scalar of this type; `None` for strings and arrays.
    pub fn fixed_size(self) -> Option<usize> {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => Some(1),
            U16 | I16 => Some(2),
            U32 | I32 | F32 => Some(4),
            U64 | I64 | F64 => Some(8),
            String | Array => None,
        }
    }

    /// The smallest number of bytes one value of this type occupies in a file (used to bound counts).
    pub fn min_encoded_size(self) -> usize {
        match self {
            ValueType::String => 8,
            ValueType::Array => 12,
            t => t.fixed_size().unwrap_or(1),
        }
    }
}

/// A metadata value. Strings are kept as raw bytes so a file round-trips exactly even when a
/// string is not valid UTF-8.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(Vec<u8>),
    /// A typed array (nested arrays carry their own element type).
    Array(Array),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    /// A string value from text.
    pub fn string(s: impl Into<String>) -> Self {
        Value::String(s.into().into_bytes())
    }

    /// An array of strings.
    pub fn strings<S: AsRef<[u8]>>(items: impl IntoIterator<Item = S>) -> Self {
        Value::Array(Array::from_strings(items))
    }

    /// The value's type code.
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(..) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// Any integer type as u64, if non-negative.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer type as i64.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v as i64),
            Value::I16(v) => Some(v as i64),
            Value::I32(v) => Some(v as i64),
            Value::I64(v) => Some(v),
            Value::U64(v) => i64::try_from(v).ok(),
            _ => self.as_u64().map(|v| v as i64),
        }
    }

    /// Any float or integer as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The string, if this is a valid UTF-8 string value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&Array> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// The elements of an array of strings: all bytes in one buffer, and where each string ends.
/// Strings are raw bytes, as in [`Value::String`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Strings {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl Strings {
    pub fn new() -> Self {
        Self::default()
    }

    /// Room for `n` strings of `bytes` bytes in all.
    pub fn with_capacity(n: usize, bytes: usize) -> Self {
        Strings { bytes: Vec::with_capacity(bytes), ends: Vec::with_capacity(n) }
    }

    pub fn push(&mut self, s: impl AsRef<[u8]>) {
        self.bytes.extend_from_slice(s.as_ref());
        self.ends.push(self.bytes.len());
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Bytes of all strings together.
    pub fn total_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// The bytes of string `i`.
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        Some(&self.bytes[start..end])
    }

    /// String `i` as text; `None` if out of range or not UTF-8.
    pub fn get_str(&self, i: usize) -> Option<&str> {
        std::str::from_utf8(self.get(i)?).ok()
    }

    /// The strings' bytes, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &[u8]> + DoubleEndedIterator + '_ {
        (0..self.len()).map(|i| self.get(i).expect("index in range"))
    }

    /// The strings as text, `None` for any that is not UTF-8.
    pub fn iter_str(&self) -> impl ExactSizeIterator<Item = Option<&str>> + DoubleEndedIterator + '_ {
        self.iter().map(|b| std::str::from_utf8(b).ok())
    }
}

impl<S: AsRef<[u8]>> FromIterator<S> for Strings {
    fn from_iter<I: IntoIterator<Item = S>>(items: I) -> Self {
        let mut s = Strings::new();
        for x in items {
            s.push(x);
        }
        s
    }
}

/// An array value: its elements in a vector of their own type.
#[derive(Clone, Debug, PartialEq)]
pub enum Array {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    /// Boxed to keep `Array` (and so [`Value`]) at 32 bytes.
    String(Box<Strings>),
    /// Nested arrays, each with its own element type.
    Array(Vec<Array>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

/// Applies `$body` to the vector of whichever variant `$a` is, as `$v`.
macro_rules! each_vec {
    ($a:expr, $v:ident => $body:expr, strings $s:ident => $sbody:expr) => {
        match $a {
            Array::U8($v) => $body,
            Array::I8($v) => $body,
            Array::U16($v) => $body,
            Array::I16($v) => $body,
            Array::U32($v) => $body,
            Array::I32($v) => $body,
            Array::F32($v) => $body,
            Array::Bool($v) => $body,
            Array::Array($v) => $body,
            Array::U64($v) => $body,
            Array::I64($v) => $body,
            Array::F64($v) => $body,
            Array::String($s) => $sbody,
        }
    };
}

macro_rules! typed_access {
    ($($name:ident, $variant:ident, $t:ty);* $(;)?) => {
        $(
            #[doc = concat!("The elements, if this is an array of `", stringify!($t), "`.")]
            pub fn $name(&self) -> Option<&[$t]> {
                match self {
                    Array::$variant(v) => Some(v),
                    _ => None,
                }
            }
        )*
    };
}

macro_rules! from_vec {
    ($($variant:ident, $t:ty);* $(;)?) => {
        $(
            impl From<Vec<$t>> for Array {
                fn from(v: Vec<$t>) -> Self {
                    Array::$variant(v)
                }
            }
            impl From<Vec<$t>> for Value {
                fn from(v: Vec<$t>) -> Self {
                    Value::Array(Array::$variant(v))
                }
            }
        )*
    };
}

from_vec!(U8, u8; I8, i8; U16, u16; I16, i16; U32, u32; I32, i32; F32, f32; Bool, bool; U64, u64; I64, i64; F64, f64;
    Array, Array);

impl From<Strings> for Array {
    fn from(s: Strings) -> Self {
        Array::String(Box::new(s))
    }
}

impl From<Array> for Value {
    fn from(a: Array) -> Self {
        Value::Array(a)
    }
}

impl Array {
    /// An empty array of element type `ty`.
    pub fn empty(ty: ValueType) -> Self {
        match ty {
            ValueType::U8 => Array::U8(Vec::new()),
            ValueType::I8 => Array::I8(Vec::new()),
            ValueType::U16 => Array::U16(Vec::new()),
            ValueType::I16 => Array::I16(Vec::new()),
            ValueType::U32 => Array::U32(Vec::new()),
            ValueType::I32 => Array::I32(Vec::new()),
            ValueType::F32 => Array::F32(Vec::new()),
            ValueType::Bool => Array::Bool(Vec::new()),
            ValueType::String => Array::String(Box::default()),
            ValueType::Array => Array::Array(Vec::new()),
            ValueType::U64 => Array::U64(Vec::new()),
            ValueType::I64 => Array::I64(Vec::new()),
            ValueType::F64 => Array::F64(Vec::new()),
        }
    }

    /// An array of strings.
    pub fn from_strings<S: AsRef<[u8]>>(items: impl IntoIterator<Item = S>) -> Self {
        Array::from(items.into_iter().collect::<Strings>())
    }

    /// Type of the elements.
    pub fn elem_type(&self) -> ValueType {
        match self {
            Array::U8(_) => ValueType::U8,
            Array::I8(_) => ValueType::I8,
            Array::U16(_) => ValueType::U16,
            Array::I16(_) => ValueType::I16,
            Array::U32(_) => ValueType::U32,
            Array::I32(_) => ValueType::I32,
            Array::F32(_) => ValueType::F32,
            Array::Bool(_) => ValueType::Bool,
            Array::String(_) => ValueType::String,
            Array::Array(_) => ValueType::Array,
            Array::U64(_) => ValueType::U64,
            Array::I64(_) => ValueType::I64,
            Array::F64(_) => ValueType::F64,
        }
    }

    pub fn len(&self) -> usize {
        each_vec!(self, v => v.len(), strings s => s.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `i` as a value of its own (strings and nested arrays are copied).
    pub fn get(&self, i: usize) -> Option<Value> {
        Some(match self {
            Array::U8(v) => Value::U8(*v.get(i)?),
            Array::I8(v) => Value::I8(*v.get(i)?),
            Array::U16(v) => Value::U16(*v.get(i)?),
            Array::I16(v) => Value::I16(*v.get(i)?),
            Array::U32(v) => Value::U32(*v.get(i)?),
            Array::I32(v) => Value::I32(*v.get(i)?),
            Array::F32(v) => Value::F32(*v.get(i)?),
            Array::Bool(v) => Value::Bool(*v.get(i)?),
            Array::String(s) => Value::String(s.get(i)?.to_vec()),
            Array::Array(v) => Value::Array(v.get(i)?.clone()),
            Array::U64(v) => Value::U64(*v.get(i)?),
            Array::I64(v) => Value::I64(*v.get(i)?),
            Array::F64(v) => Value::F64(*v.get(i)?),
        })
    }

    /// The elements as values of their own, in order (see [`Array::get`]); the typed accessors
    /// ([`Array::as_f32s`], [`Array::as_strings`], …) read without copying.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Value> + DoubleEndedIterator + '_ {
        (0..self.len()).map(|i| self.get(i).expect("index in range"))
    }

    typed_access!(
        as_u8s, U8, u8;
        as_i8s, I8, i8;
        as_u16s, U16, u16;
        as_i16s, I16, i16;
        as_u32s, U32, u32;
        as_i32s, I32, i32;
        as_f32s, F32, f32;
        as_bools, Bool, bool;
        as_u64s, U64, u64;
        as_i64s, I64, i64;
        as_f64s, F64, f64;
        as_arrays, Array, Array;
    );

    /// The strings, if this is an array of strings.
    pub fn as_strings(&self) -> Option<&Strings> {
        match self {
            Array::String(s) => Some(s),
            _ => None,
        }
    }
}

impl fmt::Display for Array {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:?}; {}]", self.elem_type(), self.len())?;
        if !self.is_empty() && self.len() <= 8 {
            write!(f, " = ")?;
            for (i, x) in self.iter().enumerate() {
                if i > 0 {
                    write!(f, ", ")?;
                }
                write!(f, "{x}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::U8(v) => write!(f, "{v}"),
            Value::I8(v) => write!(f, "{v}"),
            Value::U16(v) => write!(f, "{v}"),
            Value::I16(v) => write!(f, "{v}"),
            Value::U32(v) => write!(f, "{v}"),
            Value::I32(v) => write!(f, "{v}"),
            Value::F32(v) => write!(f, "{v}"),
            Value::Bool(v) => write!(f, "{v}"),
            Value::U64(v) => write!(f, "{v}"),
            Value::I64(v) => write!(f, "{v}"),
            Value::F64(v) => write!(f, "{v}"),
            Value::String(b) => write!(f, "{:?}", String::from_utf8_lossy(b)),
            Value::Array(a) => write!(f, "{a}"),
        }
    }
}

/// Value -> JSON for `inspect --json` (long arrays summarized by length).
pub fn to_json(v: &Value, max_array: usize) -> serde_json::Value {
    use serde_json::json;
    match v {
        Value::String(b) => json!(String::from_utf8_lossy(b)),
        Value::Array(a) => {
            if a.len() > max_array {
                json!({"type": format!("{:?}", a.elem_type()), "len": a.len()})
            } else {
                serde_json::Value::Array(a.iter().map(|x| to_json(&x, max_array)).collect())
            }
        }
        Value::Bool(b) => json!(b),
        Value::F32(x) => json!(x),
        Value::F64(x) => json!(x),
        other => match other.as_i64() {
            Some(i) => json!(i),
            None => json!(other.as_u64()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_arrays_stay_small() {
        assert_eq!(std::mem::size_of::<Array>(), 32);
        assert_eq!(std::mem::size_of::<Value>(), 32);
    }

    #[test]
    fn array_accessors() {
        let a = Array::from(vec![1.5f32, -2.0]);
        assert_eq!((a.len(), a.elem_type()), (2, ValueType::F32));
        assert_eq!(a.as_f32s(), Some(&[1.5f32, -2.0][..]));
        assert_eq!(a.as_i32s(), None);
        assert_eq!(a.get(1), Some(Value::F32(-2.0)));
        assert_eq!(a.get(2), None);
        let s = Array::from_strings(["ab", "", "\u{e9}"]);
        let strings = s.as_strings().unwrap();
        assert_eq!(strings.iter().collect::<Vec<_>>(), vec![&b"ab"[..], b"", "\u{e9}".as_bytes()]);
        assert_eq!(strings.get_str(2), Some("\u{e9}"));
        assert_eq!(strings.total_bytes(), 4);
        assert_eq!(s.get(0), Some(Value::string("ab")));
        assert_eq!(s.to_string(), "[String; 3] = \"ab\", \"\", \"\u{e9}\"");
        let nested = Array::Array(vec![Array::from(vec![1i32, 2]), Array::empty(ValueType::F32)]);
        assert_eq!(nested.as_arrays().unwrap()[0].as_i32s(), Some(&[1, 2][..]));
        assert_eq!(nested.to_string(), "[Array; 2] = [I32; 2] = 1, 2, [F32; 0]");
        assert_eq!(to_json(&Value::Array(nested), 8), serde_json::json!([[1, 2], []]));
        assert_eq!(to_json(&Value::from(vec![0u8; 9]), 8), serde_json::json!({"type": "U8", "len": 9}));
    }
}
