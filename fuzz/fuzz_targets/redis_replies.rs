//! RESP2 replies as the Redis limiter reads them off the socket (a server,
//! or anything answering on its port): no input panics or allocates without
//! bound, a reply is decoded only once it is complete, and what a complete
//! reply consumed decodes to the same value on its own.
#![no_main]

use floodwall_redis::resp::decode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(Some((value, used))) = decode(data) else {
        return;
    };
    assert!(used > 0 && used <= data.len());
    assert_eq!(decode(&data[..used]), Ok(Some((value, used))));
    // One byte short of the reply is not a reply yet.
    assert!(!matches!(decode(&data[..used - 1]), Ok(Some(_))));
});
