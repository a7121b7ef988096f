//! Redis Cluster key placement.

/// The Redis Cluster hash slot (0..16384) of `key`: CRC16 (XMODEM) of the
/// key, or of its hash tag — the part between the first `{` and the next
/// `}`, if that part is not empty — modulo 16384.
///
/// ```
/// use floodwall_redis::hash_slot;
///
/// // Keys sharing a hash tag share a slot; others spread out.
/// assert_eq!(hash_slot(b"floodwall:room:{42}:send"), hash_slot(b"floodwall:room:{42}:join"));
/// assert_eq!(hash_slot(b"123456789"), 0x31C3 % 16384);
/// ```
pub fn hash_slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    crc16(hashed) % 16384
}

/// CRC16-CCITT (XMODEM): polynomial 0x1021, initial value 0, as Redis
/// Cluster specifies.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_matches_the_cluster_specification_check_value() {
        // The Redis Cluster specification's reference output.
        assert_eq!(crc16(b"123456789"), 0x31C3);
    }

    #[test]
    fn hash_tags_follow_the_cluster_rules() {
        // Examples from the Redis Cluster specification.
        assert_eq!(hash_slot(b"{user1000}.following"), hash_slot(b"user1000"));
        assert_eq!(hash_slot(b"foo{}{bar}"), hash_slot(b"foo{}{bar}"));
        assert_ne!(
            hash_slot(b"foo{}{bar}"),
            hash_slot(b"bar"),
            "empty tag: whole key"
        );
        assert_eq!(hash_slot(b"foo{{bar}}zap"), hash_slot(b"{bar"));
        assert_eq!(hash_slot(b"foo{bar}{zap}"), hash_slot(b"bar"));
        // Known slots (redis-cli CLUSTER KEYSLOT).
        assert_eq!(hash_slot(b"foo"), 12182);
        assert_eq!(hash_slot(b"bar"), 5061);
    }
}
