//! The offline `writeboost` command; the logic lives in `writeboost::cli`.

fn main() {
    std::process::exit(writeboost::cli::main());
}
