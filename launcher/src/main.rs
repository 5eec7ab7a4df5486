fn main() { eprintln!("procmesh-launch is not built yet (issue 5)"); std::process::exit(2); }
