//! Opens (creating it if needed) the store at the path given as the only argument, and closes
//! it: `cargo run -p saga-store --example open_store -- <dir>`. Exits 3 with the error when the
//! open fails. The store's tests run it under `strace` to interrupt a first open at every write
//! and sync (`tests/first_open`).

fn main() {
    let Some(path) = std::env::args_os().nth(1) else {
        eprintln!("usage: open_store <dir>");
        std::process::exit(2);
    };
    match saga_store::SledStore::open(&path) {
        Ok(store) => drop(store),
        Err(e) => {
            eprintln!("open failed: {e}");
            std::process::exit(3);
        }
    }
}
