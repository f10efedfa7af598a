//! The event decoder and the envelope hash on arbitrary bytes: never panic; whatever decodes
//! re-encodes and decodes to the same envelope, with the same hash.
#![no_main]

use keyledger_store::envelope::envelope_hash;
use keyledger_store::log::decode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = envelope_hash(&value);
    }
    let Ok(env) = decode(data) else {
        return;
    };
    let bytes = serde_json::to_vec(&env).expect("a decoded envelope serializes");
    let again = decode(&bytes).expect("a re-encoded envelope decodes");
    assert_eq!(again, env);
    let value = serde_json::to_value(&env).expect("to a JSON value");
    let stored: serde_json::Value = serde_json::from_slice(&bytes).expect("valid JSON");
    assert_eq!(envelope_hash(&value).ok(), envelope_hash(&stored).ok());
});
