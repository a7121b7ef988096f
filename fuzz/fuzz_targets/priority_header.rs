//! The priority and admission-level headers (`business-user`), as every
//! floodwall server and collaborative client reads them from the wire: no
//! input panics, and whatever parses prints back to the same bytes' value.
#![no_main]

use floodwall_core::Priority;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Priority::parse(data) {
        assert!(p.user() <= Priority::MAX_USER);
        let header = p.header_value();
        assert_eq!(Priority::parse(header.as_bytes()), Ok(p));
        assert_eq!(header.to_str().unwrap(), p.to_string());
        assert_eq!(Priority::from_index(p.index()), p);
    }
});
