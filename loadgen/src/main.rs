//! `trailcast-loadgen` will simulate athletes and watchers against a
//! trailcast node (see the loadgen issue). Until then it only says so.

fn main() {
    eprintln!("trailcast-loadgen: not built yet; see the loadgen issue");
    std::process::exit(2);
}
