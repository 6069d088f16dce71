//! Field-level validation results. A request is checked completely before it is refused, so a
//! caller sees every bad field in one answer rather than fixing them one round trip at a time.

use std::fmt;

/// One bad field of a request: its path (`order_lines[3].total_amount`) and why it is bad.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// Path of the field in the request, using the API's field names.
    pub field: String,
    /// What is wrong, in words a caller can act on.
    pub description: String,
}

/// Every violation found in a request. Empty means the request is valid.
#[derive(Debug, Clone, Default, PartialEq, Eq, thiserror::Error)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    /// An empty collection.
    pub fn new() -> Self {
        Self::default()
    }

    /// A collection with one violation.
    pub fn single(field: impl Into<String>, description: impl Into<String>) -> Self {
        let mut v = Self::new();
        v.push(field, description);
        v
    }

    /// Records that `field` is bad because of `description`.
    pub fn push(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation {
            field: field.into(),
            description: description.into(),
        });
    }

    /// Records the error of `result` under `field`, returning the value when there is one.
    pub fn check<T, E: fmt::Display>(&mut self, field: &str, result: Result<T, E>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(e) => {
                self.push(field, e.to_string());
                None
            }
        }
    }

    /// Records a violation when `value` has more than `max` characters. Klarna counts
    /// characters, not bytes, so neither do we.
    pub fn max_chars(&mut self, field: &str, value: &str, max: usize) {
        if value.chars().count() > max {
            self.push(field, format!("must be at most {max} characters"));
        }
    }

    /// Records a violation when `value` holds a control character (a NUL, a line break, an
    /// escape): text that reaches the customer's statement or Klarna's settlement files goes
    /// there as sent, so it is refused here, by name, rather than by Klarna or not at all.
    pub fn no_control_chars(&mut self, field: &str, value: &str) {
        if value.chars().any(char::is_control) {
            self.push(field, "must not contain control characters");
        }
    }

    /// Moves every violation of `other` into this one, prefixing each path with `prefix.`.
    pub fn extend_nested(&mut self, prefix: &str, other: Violations) {
        for v in other.0 {
            self.0.push(FieldViolation {
                field: format!("{prefix}.{}", v.field),
                description: v.description,
            });
        }
    }

    /// True when nothing was found.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The violations, in the order they were found.
    pub fn as_slice(&self) -> &[FieldViolation] {
        &self.0
    }

    /// `Ok(value)` when nothing was found, else `Err(self)`.
    pub fn into_result<T>(self, value: impl FnOnce() -> T) -> Result<T, Violations> {
        if self.is_empty() {
            Ok(value())
        } else {
            Err(self)
        }
    }
}

impl fmt::Display for Violations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for v in &self.0 {
            if !first {
                f.write_str("; ")?;
            }
            first = false;
            write!(f, "{}: {}", v.field, v.description)?;
        }
        Ok(())
    }
}

impl<'a> IntoIterator for &'a Violations {
    type Item = &'a FieldViolation;
    type IntoIter = std::slice::Iter<'a, FieldViolation>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// Why a single value is invalid; callers attach the field path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(pub String);

impl InvalidValue {
    pub(crate) fn new(description: impl Into<String>) -> Self {
        Self(description.into())
    }
}
