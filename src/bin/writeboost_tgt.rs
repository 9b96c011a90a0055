//! `writeboost_tgt`: `spdk_tgt` plus the writeboost bdev module. Same options (run with `-h`),
//! NVMe-oF (TCP), iSCSI and NBD targets included.

fn main() {
    std::process::exit(writeboost::bdev::app_main("writeboost_tgt"));
}
