//! WebSocket frame headers (RFC 6455 §5.2), read without any I/O: how long the frame a buffer
//! starts with is, so the reader can refuse an oversized frame from its header alone.

/// Header and payload length of the frame `buf` starts with, if its header is complete up to
/// the length (the masking key, if any, is counted but need not have arrived).
pub(super) fn header_and_payload(buf: &[u8]) -> Option<(usize, u64)> {
    let second = *buf.get(1)?;
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    match second & 0x7F {
        126 => {
            let len = u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?]);
            Some((4 + mask, u64::from(len)))
        }
        127 => {
            let bytes: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
            Some((10 + mask, u64::from_be_bytes(bytes)))
        }
        len => Some((2 + mask, u64::from(len))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_from_headers() {
        assert_eq!(header_and_payload(&[0x81, 5]), Some((2, 5)));
        assert_eq!(header_and_payload(&[0x81, 0x85]), Some((6, 5)), "masked");
        assert_eq!(header_and_payload(&[0x82, 126, 1, 0]), Some((4, 256)));
        assert_eq!(header_and_payload(&[0x82, 126, 1]), None, "incomplete");
        let mut long = vec![0x82, 127];
        long.extend(70_000u64.to_be_bytes());
        assert_eq!(header_and_payload(&long), Some((10, 70_000)));
        assert_eq!(header_and_payload(&[0x82]), None);
    }

    #[test]
    fn announced_lengths_need_only_the_length_bytes() {
        // A masked 64-bit length: the masking key has not arrived, the length is known.
        let mut header = vec![0x82, 0xFF];
        header.extend((1u64 << 40).to_be_bytes());
        assert_eq!(header_and_payload(&header), Some((14, 1 << 40)));
        assert_eq!(header_and_payload(&header[..9]), None);
        // A length no buffer can hold is no frame length.
        let mut huge = vec![0x82, 127];
        huge.extend(u64::MAX.to_be_bytes());
        assert_eq!(header_and_payload(&huge), Some((10, u64::MAX)));
    }
}
