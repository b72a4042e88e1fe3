//! CRC-16/MODBUS (`docs/protocols/daly-modbus.md#framing-and-crc`): reflected polynomial 0xA001, initial value 0xFFFF,
//! no final XOR, transmitted low byte first. Owns nothing else.

use crate::protocol::DecodeError;

/// The CRC-16/MODBUS of `bytes`.
#[must_use]
pub fn crc16(bytes: &[u8]) -> u16 {
    bytes.iter().fold(0xFFFF_u16, |crc, &b| {
        (0..8).fold(crc ^ u16::from(b), |crc, _| if crc & 1 == 1 { (crc >> 1) ^ 0xA001 } else { crc >> 1 })
    })
}

/// Append the CRC of `frame` to it, low byte first.
pub fn append(frame: &mut Vec<u8>) {
    let crc = crc16(frame);
    frame.extend_from_slice(&crc.to_le_bytes());
}

/// Check the trailing CRC of a whole frame (CRC included).
pub fn verify(frame: &[u8]) -> Result<(), DecodeError> {
    let split = frame.len().checked_sub(2).ok_or(DecodeError::Truncated { have: frame.len(), need: 2 })?;
    let (body, tail) = frame.split_at(split);
    let received = match tail {
        [lo, hi] => u16::from_le_bytes([*lo, *hi]),
        _ => return Err(DecodeError::Truncated { have: frame.len(), need: 2 }),
    };
    let computed = crc16(body);
    if computed == received { Ok(()) } else { Err(DecodeError::Checksum16 { name: "modbus CRC", computed, received }) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_the_request_examples_of_the_spec() {
        // (frame without CRC, CRC bytes as sent) as quoted in docs/protocols/daly-modbus.md.
        let examples: [(&[u8], [u8; 2]); 6] = [
            (&[0xd2, 0x03, 0x00, 0x00, 0x00, 0x3e], [0xd7, 0xb9]),
            (&[0xd2, 0x03, 0x00, 0x00, 0x00, 0x50], [0x56, 0x55]),
            (&[0x81, 0x03, 0x00, 0x00, 0x00, 0x40], [0x5b, 0xfa]),
            (&[0x81, 0x03, 0x00, 0x41, 0x00, 0x3e], [0x8b, 0xce]),
            (&[0xd2, 0x06, 0x00, 0xa5, 0x00, 0x01], [0x4b, 0x8a]),
            (&[0xd2, 0x03, 0x00, 0x3e, 0x00, 0x09], [0xf7, 0xa3]),
        ];
        for (body, sent) in examples {
            assert_eq!(crc16(body).to_le_bytes(), sent, "{body:02x?}");
            let mut frame = body.to_vec();
            append(&mut frame);
            assert_eq!(verify(&frame), Ok(()));
        }
    }

    #[test]
    fn a_wrong_crc_is_reported_with_both_values() {
        let frame = [0xd2, 0x06, 0x00, 0xa5, 0x00, 0x01, 0xad, 0xde];
        assert_eq!(
            verify(&frame),
            Err(DecodeError::Checksum16 { name: "modbus CRC", computed: 0x8a4b, received: 0xdead })
        );
        assert!(matches!(verify(&[0xd2]), Err(DecodeError::Truncated { .. })));
    }
}
