//! The key format: `<prefix>_<random><checksum>`.
//!
//! - `prefix`: `[a-z0-9]{1,16}`, default `kl`.
//! - `random`: 32 bytes from the OS CSPRNG (supplied by the caller: the domain draws no
//!   randomness), as two big-endian `u128` halves, each in base62 left-padded with `0` to 22
//!   characters: 44 characters.
//! - `checksum`: CRC32 (IEEE) of the UTF-8 bytes of `<prefix>_<random>`, in base62 left-padded
//!   to 6 characters.
//!
//! A mistyped or foreign string is rejected by [`Secret::parse`] without any lookup. Only the
//! SHA-256 of the whole string ([`SecretHash`]) is ever stored; the plaintext is zeroized on drop.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use std::fmt;
use zeroize::Zeroizing;

pub const DEFAULT_PREFIX: &str = "kl";
const HALF_LEN: usize = 22;
const RANDOM_LEN: usize = 2 * HALF_LEN;
const CHECKSUM_LEN: usize = 6;

/// Why a string is not a well-formed keyledger key. Deliberately vague towards callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SecretFormatError {
    #[error("missing or invalid prefix")]
    Prefix,
    #[error("wrong length or characters")]
    Body,
    #[error("checksum mismatch")]
    Checksum,
}

/// Checks a key prefix: `[a-z0-9]{1,16}`.
pub fn is_valid_prefix(prefix: &str) -> bool {
    (1..=16).contains(&prefix.len())
        && prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// A plaintext API key. Never `Debug`-printed, zeroized on drop.
pub struct Secret(Zeroizing<String>);

impl Secret {
    /// Builds a key from a valid prefix and 32 random bytes.
    ///
    /// # Panics
    /// If `prefix` is not valid; callers validate it first.
    pub fn generate(prefix: &str, random: &[u8; 32]) -> Self {
        assert!(is_valid_prefix(prefix), "prefix validated by caller");
        let hi = u128::from_be_bytes(random[..16].try_into().expect("16 bytes"));
        let lo = u128::from_be_bytes(random[16..].try_into().expect("16 bytes"));
        let mut s = String::with_capacity(prefix.len() + 1 + RANDOM_LEN + CHECKSUM_LEN);
        s.push_str(prefix);
        s.push('_');
        push_padded(&mut s, hi, HALF_LEN);
        push_padded(&mut s, lo, HALF_LEN);
        let crc = crc32fast::hash(s.as_bytes());
        push_padded(&mut s, u128::from(crc), CHECKSUM_LEN);
        Self(Zeroizing::new(s))
    }

    /// Validates the format and checksum of a presented key.
    pub fn parse(s: &str) -> Result<Self, SecretFormatError> {
        check_format(s)?;
        Ok(Self(Zeroizing::new(s.to_owned())))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn prefix(&self) -> &str {
        self.0.split_once('_').map(|(p, _)| p).unwrap_or_default()
    }

    pub fn hash(&self) -> SecretHash {
        SecretHash::of(&self.0)
    }

    /// What the log stores of this secret: its hash and its display hint.
    pub fn credential(&self) -> crate::command::Credential {
        crate::command::Credential {
            secret_hash: self.hash(),
            hint: self.hint(),
        }
    }

    /// `prefix_...` plus the last four characters, e.g. `kl_...x9Qa`.
    pub fn hint(&self) -> String {
        let tail = &self.0[self.0.len() - 4..];
        format!("{}_...{tail}", self.prefix())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({})", self.hint())
    }
}

/// Checks format and checksum without copying the string (the verification hot path).
pub fn check_format(s: &str) -> Result<(), SecretFormatError> {
    let (prefix, body) = s.split_once('_').ok_or(SecretFormatError::Prefix)?;
    if !is_valid_prefix(prefix) {
        return Err(SecretFormatError::Prefix);
    }
    if body.len() != RANDOM_LEN + CHECKSUM_LEN || !body.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(SecretFormatError::Body);
    }
    let split = s.len() - CHECKSUM_LEN;
    let crc = crc32fast::hash(&s.as_bytes()[..split]);
    if checksum_digits(crc) != s.as_bytes()[split..] {
        return Err(SecretFormatError::Checksum);
    }
    Ok(())
}

fn push_padded(out: &mut String, n: u128, width: usize) {
    let mut buf = [0u8; HALF_LEN];
    write_padded(&mut buf[..width], n);
    out.push_str(std::str::from_utf8(&buf[..width]).expect("base62 is ASCII"));
}

/// The six base62 digits of a checksum, computed with 32-bit arithmetic: this runs on every
/// verification, where the crate's 128-bit divisions cost several times the CRC itself. Pinned
/// to the crate's encoding by a property test.
fn checksum_digits(mut crc: u32) -> [u8; CHECKSUM_LEN] {
    const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = [b'0'; CHECKSUM_LEN];
    for d in out.iter_mut().rev() {
        *d = ALPHABET[(crc % 62) as usize];
        crc /= 62;
    }
    out
}

/// Writes `n` in base62 (alphabet `0-9A-Za-z`) into `out`, left-padded with `0`.
fn write_padded(out: &mut [u8], n: u128) {
    let mut digits = [0u8; HALF_LEN];
    let len = base62::encode_bytes(n, &mut digits).expect("22 digits hold any u128");
    let pad = out.len() - len;
    out[..pad].fill(b'0');
    out[pad..].copy_from_slice(&digits[..len]);
}

/// SHA-256 of a key's plaintext; the only form in which a secret is stored or published.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecretHash(pub [u8; 32]);

impl SecretHash {
    pub fn of(plaintext: &str) -> Self {
        Self(Sha256::digest(plaintext.as_bytes()).into())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Exactly 64 hex digits, either case (no `0x` prefix, which the decoder would strip).
    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Self(out))
    }
}

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Short form only: hashes stay out of logs.
        write!(f, "SecretHash({:02x}{:02x}..)", self.0[0], self.0[1])
    }
}

/// Hex in human-readable formats, the 32 raw bytes in binary ones.
impl Serialize for SecretHash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_hex())
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for SecretHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
            Self::from_hex(&s).ok_or_else(|| serde::de::Error::custom("expected 64 hex digits"))
        } else {
            d.deserialize_bytes(RawHash)
        }
    }
}

/// The 32 raw bytes of a [`SecretHash`] in a binary format.
struct RawHash;

impl serde::de::Visitor<'_> for RawHash {
    type Value = SecretHash;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("32 bytes")
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<SecretHash, E> {
        <[u8; 32]>::try_from(v)
            .map(SecretHash)
            .map_err(|_| E::invalid_length(v.len(), &self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn generated_key_has_documented_shape() {
        let s = Secret::generate("kl", &[7u8; 32]);
        let text = s.expose();
        assert!(text.starts_with("kl_"));
        assert_eq!(text.len(), 3 + 44 + 6);
        assert!(check_format(text).is_ok());
        assert_eq!(s.hint(), format!("kl_...{}", &text[text.len() - 4..]));
    }

    /// Pins the format byte for byte (vectors computed independently from the module doc).
    #[test]
    fn known_vectors() {
        assert_eq!(
            Secret::generate("kl", &[7u8; 32]).expose(),
            "kl_0DG9mkOv2l6AkSp3WsPxY70DG9mkOv2l6AkSp3WsPxY73sdv5i"
        );
        let counting: [u8; 32] = std::array::from_fn(|i| i as u8);
        assert_eq!(
            Secret::generate("kl", &counting).expose(),
            "kl_000SYW7RiJxkEgOGusQGwp0UJg4EBGO3cQWJhXqJNbv54HnVJh"
        );
    }

    #[test]
    fn all_zero_random_bytes_still_have_full_length() {
        let s = Secret::generate("x", &[0u8; 32]);
        assert_eq!(s.expose().len(), 2 + 44 + 6);
        assert!(Secret::parse(s.expose()).is_ok());
    }

    #[test]
    fn rejects_foreign_and_malformed_strings() {
        assert_eq!(check_format("nope"), Err(SecretFormatError::Prefix));
        assert_eq!(check_format("KL_abc"), Err(SecretFormatError::Prefix));
        assert_eq!(check_format("kl_short"), Err(SecretFormatError::Body));
        assert_eq!(
            check_format("ghp_16C7e42F292c6912E7710c838347Ae178B4a"),
            Err(SecretFormatError::Body)
        );
    }

    #[test]
    fn hash_hex_round_trips() {
        let h = SecretHash::of("kl_x");
        assert_eq!(SecretHash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(SecretHash::from_hex("zz"), None);
        assert_eq!(SecretHash::from_hex(&h.to_hex().to_uppercase()), Some(h));
        assert_eq!(SecretHash::from_hex(&h.to_hex()[..62]), None);
    }

    #[test]
    fn hash_hex_rejects_a_0x_prefix() {
        let h = SecretHash::of("kl_x");
        let prefixed = format!("0x{}", &h.to_hex()[..62]);
        assert_eq!(SecretHash::from_hex(&prefixed), None);
        assert_eq!(SecretHash::from_hex(&format!("0x{}", h.to_hex())), None);
    }

    #[test]
    fn debug_never_shows_the_plaintext() {
        let s = Secret::generate("kl", &[9u8; 32]);
        assert!(!format!("{s:?}").contains(s.expose()));
    }

    proptest! {
        #[test]
        fn every_generated_key_parses(bytes in any::<[u8; 32]>(), prefix in "[a-z0-9]{1,16}") {
            let s = Secret::generate(&prefix, &bytes);
            prop_assert!(Secret::parse(s.expose()).is_ok());
            prop_assert_eq!(s.prefix(), prefix.as_str());
        }

        #[test]
        fn any_single_character_typo_is_caught(bytes in any::<[u8; 32]>(), pos in 3usize..53, c in "[0-9A-Za-z]") {
            let s = Secret::generate("kl", &bytes);
            let mut typo = s.expose().to_owned().into_bytes();
            let c = c.as_bytes()[0];
            prop_assume!(typo[pos] != c);
            typo[pos] = c;
            let typo = String::from_utf8(typo).unwrap();
            prop_assert!(check_format(&typo).is_err());
        }

        #[test]
        fn fast_checksum_digits_equal_the_crate_encoding(crc in any::<u32>()) {
            let mut expected = [0u8; CHECKSUM_LEN];
            write_padded(&mut expected, u128::from(crc));
            prop_assert_eq!(checksum_digits(crc), expected);
        }

        #[test]
        fn parsing_arbitrary_strings_never_panics(s in ".{0,80}") {
            let _ = check_format(&s);
        }
    }
}
