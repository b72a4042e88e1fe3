//! Placeholder for the daly codec while it is being written; replaced before this lands.

pub mod alarms;

use super::{Capture, DecodeError, DecodeOptions};

/// A decoded daly reply.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Reply;

/// Decode a captured daly byte stream.
pub fn decode_capture(
    _request: Option<&[u8]>,
    response: &[u8],
    _options: &DecodeOptions,
) -> Result<Capture<Reply>, DecodeError> {
    Err(DecodeError::NoFrame { len: response.len() })
}
