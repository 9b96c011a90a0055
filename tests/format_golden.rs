//! Golden bytes of the on-disk format: fixed structures encode to exactly the hex dumps below, the
//! same dumps appear in docs/FORMAT.md, and the documented bytes decode back to the structures.
//! A change here is a format change: bump the version and update FORMAT.md in the same commit.

use writeboost::cli::hexdump;
use writeboost::format::segment::data_block_crc;
use writeboost::format::{
    Entry, Geometry, Record, SegmentHeader, Superblock, RECORD_FLAG_CLEAN_SHUTDOWN,
};

const FORMAT_UUID: [u8; 16] = [
    0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff,
];
const BACKING_UUID: [u8; 16] = [
    0x0f, 0x1e, 0x2d, 0x3c, 0x4b, 0x5a, 0x69, 0x78, 0x87, 0x96, 0xa5, 0xb4, 0xc3, 0xd2, 0xe1, 0xf0,
];

const SUPERBLOCK_DUMP: &str = "\
00000000  57 42 4f 4f 53 54 53 42  01 00 00 00 00 00 00 00  |WBOOSTSB........|
00000010  00 11 22 33 44 55 66 77  88 99 aa bb cc dd ee ff  |..\"3DUfw........|
00000020  00 10 00 00 00 00 08 00  01 00 00 00 00 00 00 00  |................|
00000030  7e 00 00 00 00 00 00 00  00 00 10 00 00 00 00 00  |~...............|
00000040  00 00 00 04 00 00 00 00  00 00 00 40 00 00 00 00  |...........@....|
00000050  0f 1e 2d 3c 4b 5a 69 78  87 96 a5 b4 c3 d2 e1 f0  |..-<KZix........|
00000060  00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00  |................|
00000070  00 00 00 00 00 00 00 00  00 00 00 00 dd e6 fa 6c  |...............l|
00000080
";

const RECORD_DUMP: &str = "\
00001000  57 42 4f 4f 53 54 52 43  00 11 22 33 44 55 66 77  |WBOOSTRC..\"3DUfw|
00001010  88 99 aa bb cc dd ee ff  08 00 00 00 00 00 00 00  |................|
00001020  28 00 00 00 00 00 00 00  2a 00 00 00 00 00 00 00  |(.......*.......|
00001030  01 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00  |................|
00001040  00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00  |................|
*
00001070  00 00 00 00 00 00 00 00  00 00 00 00 ea da de 32  |...............2|
00001080
";

const SEGMENT_HEADER_DUMP: &str = "\
00000000  57 42 4f 4f 53 54 53 47  00 11 22 33 44 55 66 77  |WBOOSTSG..\"3DUfw|
00000010  88 99 aa bb cc dd ee ff  2a 00 00 00 00 00 00 00  |........*.......|
00000020  28 00 00 00 00 00 00 00  ef cd ab 89 02 00 00 00  |(...............|
00000030  00 00 00 00 00 00 00 00  00 00 00 00 ae eb dd 33  |...............3|
00000040  05 00 00 00 00 00 00 00  44 33 22 11 ff ff 00 00  |........D3\".....|
00000050  05 04 03 02 01 00 00 00  ef be ad de 0f 03 00 00  |................|
00000060
";

fn superblock() -> Superblock {
    Superblock {
        version_major: 1,
        version_minor: 0,
        format_uuid: FORMAT_UUID,
        geometry: Geometry::for_device(64 << 20, 512).unwrap(),
        cache_size_bytes: 64 << 20,
        backing_size_bytes: 1 << 30,
        backing_uuid: BACKING_UUID,
        flags: 0,
    }
}

fn record() -> Record {
    Record {
        format_uuid: FORMAT_UUID,
        seq: 8,
        last_writeback_id: 40,
        head_id: 42,
        flags: RECORD_FLAG_CLEAN_SHUTDOWN,
    }
}

fn segment_header() -> SegmentHeader {
    SegmentHeader {
        format_uuid: FORMAT_UUID,
        id: 42,
        durable_through_id: 40,
        prev_header_crc: 0x89ab_cdef,
        flags: 0,
        entries: vec![
            Entry {
                backing_block: 5,
                data_crc: 0x1122_3344,
                valid_bits: 0xff,
                dirty_bits: 0xff,
            },
            Entry {
                backing_block: 0x01_0203_0405,
                data_crc: 0xdead_beef,
                valid_bits: 0x0f,
                dirty_bits: 0x03,
            },
        ],
        header_crc: 0,
    }
}

/// The dump that follows `<!-- golden:NAME -->` in docs/FORMAT.md.
fn documented_dump(name: &str) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/FORMAT.md");
    let doc = std::fs::read_to_string(path).expect("docs/FORMAT.md");
    let marker = format!("<!-- golden:{name} -->\n```text\n");
    let start = doc
        .find(&marker)
        .unwrap_or_else(|| panic!("no {marker:?} in FORMAT.md"))
        + marker.len();
    let len = doc[start..].find("```").expect("closing fence");
    doc[start..start + len].to_string()
}

/// Bytes back from a `hexdump -C` style dump (a `*` repeats the line before up to the next offset).
fn parse_dump(dump: &str) -> (u64, Vec<u8>) {
    let mut base = None;
    let mut bytes: Vec<u8> = Vec::new();
    let mut repeat = false;
    for line in dump.lines() {
        if line == "*" {
            repeat = true;
            continue;
        }
        let (off, rest) = line.split_at(8);
        let off = u64::from_str_radix(off, 16).expect("offset");
        let base = *base.get_or_insert(off);
        if repeat {
            let last: Vec<u8> = bytes[bytes.len() - 16..].to_vec();
            while base + (bytes.len() as u64) < off {
                bytes.extend(&last);
            }
            repeat = false;
        }
        assert_eq!(
            base + bytes.len() as u64,
            off,
            "dump offsets are contiguous"
        );
        let hex = rest.split('|').next().unwrap();
        bytes.extend(
            hex.split_whitespace()
                .map(|h| u8::from_str_radix(h, 16).expect("hex byte")),
        );
    }
    (base.expect("a dump"), bytes)
}

#[test]
fn superblock_encodes_to_the_documented_bytes() {
    let enc = superblock().encode();
    assert_eq!(enc.len(), 4096);
    assert_eq!(hexdump(&enc[..128], 0), SUPERBLOCK_DUMP);
    assert!(
        enc[128..].iter().all(|&b| b == 0),
        "the rest of block 0 is zero"
    );
    assert_eq!(documented_dump("superblock"), SUPERBLOCK_DUMP);
    let (base, bytes) = parse_dump(SUPERBLOCK_DUMP);
    assert_eq!((base, &bytes[..]), (0, &enc[..128]));
    assert_eq!(Superblock::decode(&bytes).unwrap(), superblock());
}

#[test]
fn record_encodes_to_the_documented_bytes() {
    let enc = record().encode();
    assert_eq!(enc.len(), 4096);
    assert_eq!(hexdump(&enc[..128], 0x1000), RECORD_DUMP);
    assert!(enc[128..].iter().all(|&b| b == 0));
    assert_eq!(documented_dump("record"), RECORD_DUMP);
    let (base, bytes) = parse_dump(RECORD_DUMP);
    assert_eq!(
        base,
        writeboost::format::RECORD_OFFSETS_BYTES[(record().seq % 2) as usize]
    );
    assert_eq!(Record::decode(&bytes).unwrap(), record());
}

#[test]
fn segment_header_encodes_to_the_documented_bytes() {
    let mut enc = vec![0u8; 4096];
    let crc = segment_header().encode_into(&mut enc);
    assert_eq!(crc, 0x33dd_ebae);
    assert_eq!(hexdump(&enc[..96], 0), SEGMENT_HEADER_DUMP);
    assert_eq!(documented_dump("segment_header"), SEGMENT_HEADER_DUMP);
    let (_, bytes) = parse_dump(SEGMENT_HEADER_DUMP);
    let decoded = SegmentHeader::decode(&bytes, 127).unwrap();
    assert_eq!(decoded.header_crc, crc);
    assert_eq!(
        SegmentHeader {
            header_crc: 0,
            ..decoded
        },
        segment_header()
    );
    // Bytes after the last entry are not covered: the header still decodes with garbage there.
    let mut tail = enc.clone();
    tail[96..].fill(0xa5);
    assert_eq!(SegmentHeader::decode(&tail, 127).unwrap().header_crc, crc);
}

#[test]
fn crc_is_crc32c_castagnoli() {
    assert_eq!(data_block_crc(b"123456789"), 0xe306_9283);
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/FORMAT.md")).unwrap();
    assert!(doc.contains("`crc32c(b\"123456789\") = 0xe3069283`"));
}

#[test]
fn documented_geometry_table_matches_the_code() {
    // FORMAT.md section 2: header_blocks and data blocks for every segment size.
    let want = [
        (16, 1, 3),
        (32, 1, 7),
        (64, 1, 15),
        (128, 1, 31),
        (256, 1, 63),
        (512, 1, 127),
        (1024, 2, 254),
        (2048, 3, 509),
        (4096, 4, 1020),
    ];
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/FORMAT.md")).unwrap();
    let row = |name: &str, f: fn(&(u32, u32, u32)) -> u32| {
        let cells: Vec<String> = want.iter().map(|w| f(w).to_string()).collect();
        format!("| {name} | {} |", cells.join(" | "))
    };
    for r in [
        row("header_blocks", |w| w.1),
        row("data blocks (entries)", |w| w.2),
    ] {
        assert!(doc.contains(&r), "FORMAT.md lacks the row {r}");
    }
    for (kib, header_blocks, data_blocks) in want {
        let g = Geometry::for_device(8 << 30, kib).unwrap();
        assert_eq!(
            (g.header_blocks, g.data_blocks_per_segment()),
            (header_blocks, data_blocks),
            "{kib} KiB"
        );
    }
}
