//! The Redis limiter's script reply, as whatever answers on Redis's port
//! could send it (redis-rs reads the bytes, floodwall reads the value): no
//! input panics, and a grant never exceeds the tokens asked for, however
//! large the number in the reply.
#![no_main]

use floodwall_redis::__fuzz::script_reply;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&want, reply)) = data.split_first() else {
        return;
    };
    let want = u32::from(want).max(1);
    if let Some(granted) = script_reply(reply, want) {
        assert!(granted <= want, "granted {granted} of {want}");
    }
});
