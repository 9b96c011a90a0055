//! A canonical hex dump (`hexdump -C` layout): offset, 16 bytes in two groups of 8, the printable
//! ASCII; a run of lines equal to the one before is shown once as `*`.

/// Dumps `bytes`, numbering lines from `base_offset`. Ends with the offset after the last byte.
pub fn hexdump(bytes: &[u8], base_offset: u64) -> String {
    let mut s = String::new();
    let mut prev: Option<&[u8]> = None;
    let mut squeezing = false;
    for (i, line) in bytes.chunks(16).enumerate() {
        if prev == Some(line) && line.len() == 16 {
            if !squeezing {
                s.push_str("*\n");
                squeezing = true;
            }
            continue;
        }
        squeezing = false;
        prev = Some(line);
        s.push_str(&format!("{:08x} ", base_offset + (i * 16) as u64));
        for k in 0..16 {
            if k == 8 {
                s.push(' ');
            }
            match line.get(k) {
                Some(b) => s.push_str(&format!(" {b:02x}")),
                None => s.push_str("   "),
            }
        }
        s.push_str("  |");
        s.extend(line.iter().map(|&b| {
            if (0x20..0x7f).contains(&b) {
                b as char
            } else {
                '.'
            }
        }));
        s.push_str("|\n");
    }
    s.push_str(&format!("{:08x}\n", base_offset + bytes.len() as u64));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hexdump_matches_canonical_layout_and_squeezes_repeats() {
        let mut b = b"WBOOSTSB\x01\x00\x00\x00\x00\x00\x00\x00".to_vec();
        b.extend([0u8; 48]);
        b.extend(b"abc");
        let d = hexdump(&b, 0x1000);
        let want = "\
00001000  57 42 4f 4f 53 54 53 42  01 00 00 00 00 00 00 00  |WBOOSTSB........|
00001010  00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00  |................|
*
00001040  61 62 63                                          |abc|
00001043
";
        assert_eq!(d, want);
    }
}
