//! Money: integer minor units and ISO codes. A float never represents an amount here: Klarna
//! takes integers in minor units, and so does the API.

use std::fmt;

use crate::validation::InvalidValue;

/// Klarna's largest amount for one refund, capture or line total, in minor units
/// (`maximum: 200000000` in the Order Management spec).
pub const MAX_AMOUNT: i64 = 200_000_000;

/// A refundable amount: 1 to [`MAX_AMOUNT`] minor units. Deserializing validates too, so a
/// stored amount is as trustworthy as a parsed one.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "i64", into = "i64")]
pub struct Amount(i64);

impl TryFrom<i64> for Amount {
    type Error = InvalidValue;
    fn try_from(minor_units: i64) -> Result<Self, InvalidValue> {
        Self::parse(minor_units)
    }
}

impl From<Amount> for i64 {
    fn from(a: Amount) -> i64 {
        a.0
    }
}

impl Amount {
    /// Accepts 1..=[`MAX_AMOUNT`]; zero and negative amounts move no money and are refused.
    pub fn parse(minor_units: i64) -> Result<Self, InvalidValue> {
        if minor_units <= 0 {
            return Err(InvalidValue::new("must be greater than 0 (minor units)"));
        }
        if minor_units > MAX_AMOUNT {
            return Err(InvalidValue::new(format!(
                "must be at most {MAX_AMOUNT} (Klarna's maximum, in minor units)"
            )));
        }
        Ok(Self(minor_units))
    }

    /// The amount in minor units.
    pub fn minor_units(self) -> i64 {
        self.0
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An ISO 4217 currency code, held upper case (Klarna's case varies; comparisons must not).
/// Deserializing validates too.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency(String);

impl TryFrom<String> for Currency {
    type Error = InvalidValue;
    fn try_from(code: String) -> Result<Self, InvalidValue> {
        Self::parse(&code)
    }
}

impl From<Currency> for String {
    fn from(c: Currency) -> String {
        c.0
    }
}

impl Currency {
    /// Accepts three ASCII letters in any case.
    pub fn parse(code: &str) -> Result<Self, InvalidValue> {
        if code.len() == 3 && code.bytes().all(|b| b.is_ascii_alphabetic()) {
            Ok(Self(code.to_ascii_uppercase()))
        } else {
            Err(InvalidValue::new(
                "must be an ISO 4217 currency code of three letters, e.g. SEK",
            ))
        }
    }

    /// The upper-case code.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An ISO 3166-1 alpha-2 country code, held upper case.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CountryCode(String);

impl CountryCode {
    /// Accepts two ASCII letters in any case.
    pub fn parse(code: &str) -> Result<Self, InvalidValue> {
        if code.len() == 2 && code.bytes().all(|b| b.is_ascii_alphabetic()) {
            Ok(Self(code.to_ascii_uppercase()))
        } else {
            Err(InvalidValue::new(
                "must be an ISO 3166-1 alpha-2 country code",
            ))
        }
    }

    /// The upper-case code.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CountryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn amount_bounds() {
        assert!(Amount::parse(0).is_err());
        assert!(Amount::parse(-1).is_err());
        assert_eq!(Amount::parse(1).map(Amount::minor_units), Ok(1));
        assert_eq!(
            Amount::parse(MAX_AMOUNT).map(Amount::minor_units),
            Ok(MAX_AMOUNT)
        );
        assert!(Amount::parse(MAX_AMOUNT + 1).is_err());
        assert!(Amount::parse(i64::MAX).is_err());
        assert!(Amount::parse(i64::MIN).is_err());
    }

    #[test]
    fn currency_is_case_insensitive_and_three_letters() {
        assert_eq!(
            Currency::parse("sek").map(|c| c.to_string()),
            Ok("SEK".into())
        );
        assert_eq!(Currency::parse("SeK"), Currency::parse("SEK"));
        for bad in ["", "SE", "SEKK", "S3K", "ÅÄÖ", " SEK"] {
            assert!(Currency::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn country_is_two_letters() {
        assert_eq!(
            CountryCode::parse("se").map(|c| c.to_string()),
            Ok("SE".into())
        );
        for bad in ["", "S", "SWE", "1E"] {
            assert!(CountryCode::parse(bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn amount_accepts_exactly_the_refundable_range(v in any::<i64>()) {
            prop_assert_eq!(Amount::parse(v).is_ok(), (1..=MAX_AMOUNT).contains(&v));
        }

        #[test]
        fn currency_accepts_any_three_ascii_letters(s in "[a-zA-Z]{3}") {
            let c = Currency::parse(&s).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(c.as_str(), s.to_ascii_uppercase());
        }
    }
}
