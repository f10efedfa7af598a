//! Key parsing and its checksum on arbitrary strings: never panics, and whatever is accepted is
//! exactly what `Secret::generate` would make from its prefix and random part.
#![no_main]

use keyledger_core::Secret;
use keyledger_core::secret::{check_format, is_valid_prefix};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let ok = check_format(s).is_ok();
    let parsed = Secret::parse(s);
    assert_eq!(ok, parsed.is_ok());
    let Ok(secret) = parsed else {
        return;
    };
    let (prefix, body) = s.split_once('_').expect("accepted keys have a prefix");
    assert!(is_valid_prefix(prefix));
    assert_eq!(body.len(), 50);
    assert_eq!(secret.prefix(), prefix);
    assert_eq!(secret.hint(), format!("{prefix}_...{}", &s[s.len() - 4..]));
    // Halves above u128::MAX are well-formed but never generated (see the core tests).
    if let (Ok(hi), Ok(lo)) = (decode62(&body[..22]), decode62(&body[22..44])) {
        let mut random = [0u8; 32];
        random[..16].copy_from_slice(&hi.to_be_bytes());
        random[16..].copy_from_slice(&lo.to_be_bytes());
        assert_eq!(Secret::generate(prefix, &random).expose(), s);
    }
});

/// Base62 (`0-9A-Za-z`) to `u128`, `Err` on overflow.
fn decode62(s: &str) -> Result<u128, ()> {
    s.bytes().try_fold(0u128, |n, b| {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'A'..=b'Z' => b - b'A' + 10,
            b'a'..=b'z' => b - b'a' + 36,
            _ => return Err(()),
        };
        n.checked_mul(62)
            .and_then(|n| n.checked_add(u128::from(d)))
            .ok_or(())
    })
}
