//! `tricommit-load`: the load generator.

fn main() {
    eprintln!("tricommit-load: not built yet");
    std::process::exit(2);
}
