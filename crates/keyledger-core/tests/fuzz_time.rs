//! Timestamps as bodies and events carry them: whatever parses must serialize to the same
//! instant, or a stored event would say something else than the state it produced.

use keyledger_core::Timestamp;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn parsed_timestamps_round_trip(
        s in "[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,9})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])"
    ) {
        if let Ok(t) = Timestamp::parse_rfc3339(&s) {
            let text = t.to_rfc3339();
            prop_assert_eq!(Timestamp::parse_rfc3339(&text), Ok(t), "{} -> {}", s, text);
        }
    }

    #[test]
    fn arbitrary_strings_never_panic(s in any::<String>()) {
        let _ = Timestamp::parse_rfc3339(&s);
    }
}

/// Regression: `9999-12-31T23:59:59-01:00` (the year 10000 in UTC) was accepted and written back
/// as `1970-01-01T00:00:00.000Z`, so a key valid in memory was expired after a replay. Instants
/// outside 0000..=9999 UTC are now refused; everything accepted round-trips.
#[test]
fn the_edges_of_the_representable_range_round_trip() {
    assert!(Timestamp::parse_rfc3339("9999-12-31T23:59:59-01:00").is_err());
    assert!(Timestamp::parse_rfc3339("0000-01-01T00:00:00+01:00").is_err());
    for s in [
        "9999-12-31T23:59:59.999Z",
        "0000-01-01T00:00:00Z",
        "9999-12-31T23:59:59-01:00",
    ] {
        if let Ok(t) = Timestamp::parse_rfc3339(s) {
            assert_eq!(
                Timestamp::parse_rfc3339(&t.to_rfc3339()),
                Ok(t),
                "{s} -> {t}"
            );
        }
    }
}
