//! Instruction counts per request on every layer's admit path, next to its
//! nearest peer: `bash benches/icount.sh` runs this binary under callgrind.
//!
//! `icount <case> <requests>` drives `requests` requests through the named
//! case ([`floodwall_benches::admit`]). The script runs each case twice
//! with different request counts and divides the difference in
//! instructions by the difference in requests, so the setup (runtime,
//! layer construction, metrics) cancels out. `icount list` prints the case
//! names.

use floodwall_benches::admit;

fn main() {
    let mut args = std::env::args().skip(1);
    let case = args.next().unwrap_or_default();
    if case == "list" || case.is_empty() {
        for case in admit::CASES {
            println!("{case}");
        }
        return;
    }
    let n: u64 = args.next().and_then(|n| n.parse().ok()).unwrap_or(1_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime");
    let _guard = rt.enter();
    if admit::run(&case, n).is_none() {
        eprintln!("icount: no case {case:?}; `icount list` names them");
        std::process::exit(2);
    }
}
