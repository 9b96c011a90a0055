//! `Record::decode` on arbitrary bytes: never panics, and whatever it accepts re-encodes to bytes
//! that decode to the same record.
#![no_main]

use libfuzzer_sys::fuzz_target;
use writeboost::format::Record;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = Record::decode(data) {
        let again = Record::decode(&r.encode()).expect("a re-encoded record decodes");
        assert_eq!(again, r);
    }
});
