//! A bounds-checked cursor over received bytes: every read either returns a value or `Truncated`, so a
//! decoder never indexes out of range and never panics on short input.

use super::DecodeError;

/// Reads big-endian integers from a byte slice, front to back.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader positioned at the start of `bytes`.
    #[must_use]
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    /// Bytes consumed so far.
    #[must_use]
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Bytes not yet consumed.
    #[must_use]
    pub fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or(DecodeError::Truncated { have: self.bytes.len(), need: self.pos.saturating_add(n) })?;
        let out = self.bytes.get(self.pos..end).ok_or(DecodeError::Truncated { have: self.bytes.len(), need: end })?;
        self.pos = end;
        Ok(out)
    }

    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// The rest of the input.
    pub fn rest(&mut self) -> &'a [u8] {
        let out = self.bytes.get(self.pos..).unwrap_or_default();
        self.pos = self.bytes.len();
        out
    }

    /// Skip `n` bytes.
    pub fn skip(&mut self, n: usize) -> Result<(), DecodeError> {
        self.take(n).map(|_| ())
    }

    /// One unsigned byte.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(u8::from_be_bytes(self.array()?))
    }

    /// A big-endian unsigned 16-bit value.
    pub fn be_u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    /// A big-endian signed 16-bit value.
    pub fn be_i16(&mut self) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.array()?))
    }

    /// A big-endian unsigned 32-bit value.
    pub fn be_u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// A big-endian signed 32-bit value.
    pub fn be_i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    /// Fail unless every byte was consumed.
    pub fn expect_end(&self) -> Result<(), DecodeError> {
        if self.remaining() == 0 {
            Ok(())
        } else {
            Err(DecodeError::Oversize { declared: self.pos, actual: self.bytes.len() })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_big_endian_values_in_order() {
        let mut r = Reader::new(&[0x01, 0x02, 0x03, 0xFF, 0x1F, 0x00, 0x00, 0x00, 0x2A]);
        assert_eq!(r.u8(), Ok(1));
        assert_eq!(r.be_u16(), Ok(0x0203));
        assert_eq!(r.be_i16(), Ok(-225));
        assert_eq!(r.be_u32(), Ok(42));
        assert_eq!(r.expect_end(), Ok(()));
    }

    #[test]
    fn short_input_is_truncated_and_does_not_move_the_cursor() {
        let mut r = Reader::new(&[0x01]);
        assert_eq!(r.be_u16(), Err(DecodeError::Truncated { have: 1, need: 2 }));
        assert_eq!(r.position(), 0);
        assert_eq!(r.take(usize::MAX).map(<[u8]>::len), Err(DecodeError::Truncated { have: 1, need: usize::MAX }));
        assert_eq!(r.u8(), Ok(1));
        assert_eq!(r.rest(), &[] as &[u8]);
    }
}
