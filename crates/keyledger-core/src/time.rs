//! Millisecond timestamps, serialized as RFC 3339 in UTC with milliseconds.
//!
//! The domain never reads a clock: every command carries the `now` it was decided at.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Milliseconds since the Unix epoch, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub const fn from_millis(ms: i64) -> Self {
        Self(ms)
    }

    pub const fn millis(self) -> i64 {
        self.0
    }

    /// This instant plus `secs` seconds, saturating.
    pub fn plus_seconds(self, secs: i64) -> Self {
        Self(self.0.saturating_add(secs.saturating_mul(1000)))
    }

    /// Parses any RFC 3339 date-time (any offset) and normalises it to UTC milliseconds.
    /// Instants outside the years 0000..=9999 in UTC are refused: they could not be written
    /// back in the same form.
    pub fn parse_rfc3339(s: &str) -> Result<Self, TimestampError> {
        let dt = OffsetDateTime::parse(s, &Rfc3339).map_err(|_| TimestampError)?;
        // 0000-01-01T00:00:00Z ..= 9999-12-31T23:59:59Z, in Unix seconds.
        if !(-62_167_219_200..=253_402_300_799).contains(&dt.unix_timestamp()) {
            return Err(TimestampError);
        }
        let ms = dt.unix_timestamp_nanos() / 1_000_000;
        i64::try_from(ms).map(Self).map_err(|_| TimestampError)
    }

    /// `YYYY-MM-DDTHH:MM:SS.mmmZ`: fixed width, so the strings sort like the instants.
    pub fn to_rfc3339(self) -> String {
        self.with_rfc3339(str::to_owned)
    }

    /// Calls `f` with the RFC 3339 form, without allocating for the years 0000..=9999.
    fn with_rfc3339<R>(self, f: impl FnOnce(&str) -> R) -> R {
        match self.rfc3339_bytes() {
            Some(buf) => f(std::str::from_utf8(&buf).expect("an RFC 3339 buffer is ASCII")),
            None => f(&self.to_rfc3339_slow()),
        }
    }

    /// The RFC 3339 form written into a fixed buffer, for the years 0000..=9999 (every
    /// instant [`Timestamp::parse_rfc3339`] accepts); `None` outside them. Every response and
    /// stored event formats its timestamps, and going through `time` and `format!` cost
    /// ~200 ns each; this is a tenth of that.
    fn rfc3339_bytes(self) -> Option<[u8; 24]> {
        if !(MIN_MILLIS..=MAX_MILLIS).contains(&self.0) {
            return None;
        }
        let days = self.0.div_euclid(MILLIS_PER_DAY);
        let in_day = self.0.rem_euclid(MILLIS_PER_DAY);
        let (year, month, day) = civil_from_days(days);
        let secs = in_day / 1000;
        let fields = [
            (0, 4, year),
            (5, 2, month),
            (8, 2, day),
            (11, 2, secs / 3600),
            (14, 2, secs / 60 % 60),
            (17, 2, secs % 60),
            (20, 3, in_day % 1000),
        ];
        let mut buf = *b"0000-00-00T00:00:00.000Z";
        for (at, width, mut value) in fields {
            for i in (at..at + width).rev() {
                buf[i] = b'0' + (value % 10) as u8;
                value /= 10;
            }
        }
        Some(buf)
    }

    /// Through `time`: the reference for [`Timestamp::rfc3339_bytes`], and the form of
    /// instants outside its years (whatever `time` makes of them, as before).
    fn to_rfc3339_slow(self) -> String {
        let dt = OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            dt.year(),
            u8::from(dt.month()),
            dt.day(),
            dt.hour(),
            dt.minute(),
            dt.second(),
            dt.millisecond()
        )
    }
}

const MILLIS_PER_DAY: i64 = 86_400_000;
/// 0000-01-01T00:00:00.000Z and 9999-12-31T23:59:59.999Z.
const MIN_MILLIS: i64 = -62_167_219_200_000;
const MAX_MILLIS: i64 = 253_402_300_799_999;

/// The proleptic Gregorian (year, month, day) of a count of days since 1970-01-01, by
/// 400-year eras of 146,097 days, each counted from March so that leap days fall last.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468; // days since 0000-03-01
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of the era, 0..=146_096
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365; // 0..=399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of the March-based year
    let mp = (5 * doy + 2) / 153; // month from March, 0..=11
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A string that is not an RFC 3339 date-time in the supported range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "not an RFC 3339 date-time between the years 0000 and 9999 UTC (e.g. 2030-01-31T12:00:00Z)"
)]
pub struct TimestampError;

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.with_rfc3339(|s| f.write_str(s))
    }
}

/// RFC 3339 in human-readable formats (JSON: events, the API); milliseconds since the epoch in
/// binary ones (the persisted key table).
impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            self.with_rfc3339(|text| s.serialize_str(text))
        } else {
            s.serialize_i64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
            Self::parse_rfc3339(&s).map_err(serde::de::Error::custom)
        } else {
            i64::deserialize(d).map(Timestamp)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_milliseconds_in_utc() {
        assert_eq!(Timestamp(0).to_rfc3339(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            Timestamp(1_795_000_000_123).to_rfc3339(),
            "2026-11-18T11:06:40.123Z"
        );
    }

    #[test]
    fn formats_the_first_and_last_instants_of_the_supported_years() {
        assert_eq!(
            Timestamp(MIN_MILLIS).to_rfc3339(),
            "0000-01-01T00:00:00.000Z"
        );
        assert_eq!(
            Timestamp(MAX_MILLIS).to_rfc3339(),
            "9999-12-31T23:59:59.999Z"
        );
        assert_eq!(Timestamp(-1).to_rfc3339(), "1969-12-31T23:59:59.999Z");
        assert_eq!(
            Timestamp(951_782_400_000).to_rfc3339(),
            "2000-02-29T00:00:00.000Z"
        );
    }

    proptest::proptest! {
        #[test]
        fn the_fast_form_is_the_time_crates_form_and_parses_back(
            ms in MIN_MILLIS..=MAX_MILLIS,
        ) {
            let t = Timestamp(ms);
            let fast = t.to_rfc3339();
            proptest::prop_assert_eq!(&fast, &t.to_rfc3339_slow());
            proptest::prop_assert_eq!(t.to_string(), fast.clone());
            proptest::prop_assert_eq!(Timestamp::parse_rfc3339(&fast), Ok(t));
        }
    }

    #[test]
    fn parses_offsets_into_utc() {
        let t = Timestamp::parse_rfc3339("2026-11-18T13:06:40.123+02:00").unwrap();
        assert_eq!(t, Timestamp(1_795_000_000_123));
        assert!(Timestamp::parse_rfc3339("yesterday").is_err());
    }

    #[test]
    fn round_trips_through_serde() {
        let t = Timestamp(1_795_000_000_123);
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), t);
    }
}
