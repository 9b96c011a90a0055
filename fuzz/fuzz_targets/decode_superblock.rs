//! `Superblock::decode` on arbitrary bytes: never panics, and whatever it accepts re-encodes to
//! bytes that decode to the same superblock.
#![no_main]

use libfuzzer_sys::fuzz_target;
use writeboost::format::Superblock;

fuzz_target!(|data: &[u8]| {
    if let Ok(sb) = Superblock::decode(data) {
        let again = Superblock::decode(&sb.encode()).expect("a re-encoded superblock decodes");
        assert_eq!(again, sb);
    }
});
