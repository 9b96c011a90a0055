fn main() {
    eprintln!("writeboost: offline command not built yet");
    std::process::exit(2);
}
