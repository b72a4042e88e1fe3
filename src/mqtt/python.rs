//! Python's text forms of values — `str()` of a float, `round()`, `json.dumps` with its defaults — for the
//! compatibility layouts, whose payloads must be byte for byte what the Python tools they replace publish (a
//! Home Assistant template or a `payload_on` that compares text sees every difference).

use std::fmt::Write as _;

/// A Python value as the tools build them: a dict keeps its insertion order, which `json.dumps` follows.
#[derive(Debug, Clone, PartialEq)]
pub enum PyValue {
    /// `None`.
    None,
    /// `True` / `False`.
    Bool(bool),
    /// An `int` (wide enough for every JSON integer serde reads).
    Int(i128),
    /// A `float`.
    Float(f64),
    /// A `str`.
    Str(String),
    /// A `list`.
    List(Vec<PyValue>),
    /// A `dict`, in insertion order.
    Dict(Vec<(String, PyValue)>),
}

impl PyValue {
    /// A `str` value.
    #[must_use]
    pub fn str(text: impl Into<String>) -> Self {
        Self::Str(text.into())
    }

    /// What `json.dumps(value)` returns with its defaults (`ensure_ascii`, `", "` and `": "` separators).
    #[must_use]
    pub fn dumps(&self) -> String {
        let mut out = String::new();
        self.write_json(&mut out);
        out
    }

    fn write_json(&self, out: &mut String) {
        match self {
            Self::None => out.push_str("null"),
            Self::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Self::Int(i) => out.push_str(&i.to_string()),
            // json.dumps writes floats with float.__repr__, and the non-finite ones as JavaScript names.
            Self::Float(x) if x.is_nan() => out.push_str("NaN"),
            Self::Float(x) if x.is_infinite() => out.push_str(if *x > 0.0 { "Infinity" } else { "-Infinity" }),
            Self::Float(x) => out.push_str(&float_str(*x)),
            Self::Str(s) => write_json_str(s, out),
            Self::List(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    item.write_json(out);
                }
                out.push(']');
            }
            Self::Dict(entries) => {
                out.push('{');
                for (i, (key, value)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    write_json_str(key, out);
                    out.push_str(": ");
                    value.write_json(out);
                }
                out.push('}');
            }
        }
    }
}

impl From<&serde_json::Value> for PyValue {
    /// What `json.loads` would make of a value: whole numbers become `int`, others `float`; objects keep the
    /// order the map iterates in.
    fn from(value: &serde_json::Value) -> Self {
        use serde_json::Value;
        match value {
            Value::Null => Self::None,
            Value::Bool(b) => Self::Bool(*b),
            Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
                (Some(i), _, _) => Self::Int(i128::from(i)),
                (None, Some(u), _) => Self::Int(i128::from(u)),
                (None, None, x) => Self::Float(x.unwrap_or(f64::NAN)),
            },
            Value::String(s) => Self::Str(s.clone()),
            Value::Array(items) => Self::List(items.iter().map(Self::from).collect()),
            Value::Object(map) => Self::Dict(map.iter().map(|(k, v)| (k.clone(), Self::from(v))).collect()),
        }
    }
}

/// A JSON string literal as `json.dumps` writes it with `ensure_ascii`: everything outside printable ASCII as
/// `\uXXXX` (lower-case hex, UTF-16 surrogate pairs above U+FFFF).
fn write_json_str(text: &str, out: &mut String) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    // Writing to a String cannot fail.
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
    }
    out.push('"');
}

/// `str(x)` (= `repr(x)`) of a Python float: the shortest text that reads back as `x`, always with a decimal
/// point or an exponent; scientific notation below 1e-4 and from 1e16 on, with a signed two-digit exponent.
#[must_use]
pub fn float_str(x: f64) -> String {
    if x.is_nan() {
        return "nan".to_owned();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.to_owned();
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0" } else { "0.0" }.to_owned();
    }
    // Rust's `{:e}` gives the same shortest round-trip digits as Python's repr; only the layout differs.
    let scientific = format!("{:e}", x.abs());
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let sign = if x < 0.0 { "-" } else { "" };
    if (-4..16).contains(&exponent) {
        let point = exponent + 1; // digits before the decimal point (≤ 0: leading zeros after it)
        if point <= 0 {
            let zeros = "0".repeat(point.unsigned_abs() as usize);
            return format!("{sign}0.{zeros}{digits}");
        }
        let point = point as usize;
        if digits.len() <= point {
            let zeros = "0".repeat(point - digits.len());
            return format!("{sign}{digits}{zeros}.0");
        }
        let (whole, fraction) = digits.split_at(point);
        return format!("{sign}{whole}.{fraction}");
    }
    let (first, rest) = digits.split_at(1);
    let fraction = if rest.is_empty() { String::new() } else { format!(".{rest}") };
    let exponent_sign = if exponent < 0 { '-' } else { '+' };
    format!("{sign}{first}{fraction}e{exponent_sign}{:02}", exponent.unsigned_abs())
}

/// Python's `round(x, digits)` of a float: the exact binary value rounded to `digits` decimals, ties to even
/// (Rust's fixed-precision formatting rounds the same way), read back as the nearest float.
#[must_use]
pub fn round(x: f64, digits: usize) -> f64 {
    if !x.is_finite() {
        return x;
    }
    format!("{x:.digits$}").parse().unwrap_or(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_as_python_prints_them() {
        // Each expected text is what CPython 3.11 prints for the same float.
        for (x, python) in [
            (52.6, "52.6"),
            (53.0, "53.0"),
            (-2.5, "-2.5"),
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (3.29, "3.29"),
            (173.401, "173.401"),
            (0.1 + 0.2, "0.30000000000000004"),
            (1e-4, "0.0001"),
            (1.5e-5, "1.5e-05"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (123456789012345.6, "123456789012345.6"),
            (1e15, "1000000000000000.0"),
            (-1e-7, "-1e-07"),
            (2.5e100, "2.5e+100"),
            (f64::INFINITY, "inf"),
            (f64::NAN, "nan"),
        ] {
            assert_eq!(float_str(x), python, "{x:e}");
        }
    }

    #[test]
    fn round_ties_to_even_on_the_exact_binary_value() {
        // CPython: round(0.25, 1) == 0.2, round(2.675, 2) == 2.67 (2.675 is stored below the tie), round(2.5) == 2.
        assert_eq!(round(0.25, 1), 0.2);
        assert_eq!(round(0.35, 1), 0.3);
        assert_eq!(round(2.675, 2), 2.67);
        assert_eq!(round(2.5, 0), 2.0);
        assert_eq!(round(61.9 / 100.0 * 100.0, 2), 61.9);
        assert_eq!(float_str(round(17340.0 / 20000.0 * 100.0, 2)), "86.7");
        assert_eq!(float_str(round(10000.0 / 3.0, 2)), "3333.33");
    }

    #[test]
    fn dumps_matches_json_dumps_defaults() {
        let value = PyValue::Dict(vec![
            ("unique_id".to_owned(), PyValue::str("x")),
            ("unit".to_owned(), PyValue::str("°C")),
            ("list".to_owned(), PyValue::List(vec![PyValue::Int(1), PyValue::Float(2.0), PyValue::None])),
            ("flags".to_owned(), PyValue::List(vec![PyValue::Bool(true), PyValue::Bool(false)])),
            ("text".to_owned(), PyValue::str("a \"q\" \\ \n\u{1}\u{7f}😀")),
            ("empty".to_owned(), PyValue::Dict(Vec::new())),
        ]);
        // json.dumps of the same dict in CPython 3.11.
        assert_eq!(
            value.dumps(),
            r#"{"unique_id": "x", "unit": "\u00b0C", "list": [1, 2.0, null], "flags": [true, false], "text": "a \"q\" \\ \n\u0001\u007f\ud83d\ude00", "empty": {}}"#
        );
        assert_eq!(PyValue::List(Vec::new()).dumps(), "[]");
    }

    #[test]
    fn json_numbers_keep_their_int_or_float_kind() {
        let value: serde_json::Value = serde_json::from_str("[1, 1.0, -3, 2.5, 18446744073709551615]").unwrap();
        assert_eq!(PyValue::from(&value).dumps(), "[1, 1.0, -3, 2.5, 18446744073709551615]");
    }
}
