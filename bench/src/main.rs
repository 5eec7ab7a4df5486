fn main() { eprintln!("procmesh-bench is not built yet (issue 7)"); std::process::exit(2); }
