//! `vessel-agent`: see the library crate. As PID 1 in the guest it serves on vsock port
//! 1024; on a host, `--listen unix:///path/agent.sock` (for tests).

fn main() {
    let args: Vec<String> = std::env::args().collect();
    use vessel_agent::container::child::{child_main, CHILD_ARG, SPARE_ARG};
    if args.get(1).map(String::as_str) == Some(CHILD_ARG) {
        child_main(args.get(2).map(String::as_str) == Some(SPARE_ARG));
    }
    if let Err(e) = vessel_agent::agent::run(&args[1..]) {
        eprintln!("vessel-agent: {}", vessel_protocol::errors::chain(&e));
        if nix::unistd::getpid().as_raw() == 1 {
            // PID 1 must not exit.
            loop {
                std::thread::park();
            }
        }
        std::process::exit(1);
    }
}
