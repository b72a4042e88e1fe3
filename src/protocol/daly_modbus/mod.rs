//! Placeholder for the daly-modbus codec while it is being written; replaced before this lands.

use crate::protocol::{Capture, DecodeError, DecodeOptions};

/// A decoded daly-modbus reply.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Reply;

/// Decode a captured daly-modbus byte stream.
pub fn decode_capture(
    _request: Option<&[u8]>,
    response: &[u8],
    _options: &DecodeOptions,
) -> Result<Capture<Reply>, DecodeError> {
    Err(DecodeError::NoFrame { len: response.len() })
}
