//! `DecodeError`: everything that can be wrong with bytes received from a device, with the facts needed to
//! diagnose it (expected vs found, offsets), a stable `kind()` for tests and logs, and a bounded `reason()`
//! for the `bms_poll_failures_total{reason}` counter.

use thiserror::Error;

/// What was wrong with received bytes. Incomplete input is not an error: decoders report it separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// Fewer bytes than the frame needs arrived before the input ended.
    #[error("truncated frame: {have} of {need} bytes")]
    Truncated {
        /// Bytes that arrived.
        have: usize,
        /// Bytes the frame needs.
        need: usize,
    },
    /// A multi-frame reply (Daly 0x95 cells, 0x96 temperatures, text) ended without one of its frames, lost to
    /// noise or a dropped notification: taken as it is, its values would have holes, so the reply is incomplete.
    #[error("incomplete reply: frame {number} missing ({received} frames received)")]
    MissingFrame {
        /// The frame number that did not arrive (as the board numbers them).
        number: u8,
        /// Frames of the reply that did arrive.
        received: usize,
    },
    /// No frame at all was found in the input.
    #[error("no frame found in {len} bytes")]
    NoFrame {
        /// Bytes examined.
        len: usize,
    },
    /// The first byte is not the protocol's start byte.
    #[error("bad start byte: 0x{found:02x} (expected 0x{expected:02x})")]
    BadStart {
        /// The start byte the protocol uses.
        expected: u8,
        /// The byte found instead.
        found: u8,
    },
    /// The frame does not end with the protocol's end byte.
    #[error("missing end byte: 0x{found:02x} (expected 0x{expected:02x})")]
    MissingEnd {
        /// The end byte the protocol uses.
        expected: u8,
        /// The byte found instead.
        found: u8,
    },
    /// An 8-bit checksum or check byte did not match.
    #[error("checksum mismatch: computed 0x{computed:02x}, received 0x{received:02x}")]
    Checksum {
        /// Checksum computed over the received bytes.
        computed: u8,
        /// Checksum carried by the frame.
        received: u8,
    },
    /// A 16-bit checksum (Modbus CRC, Pace CHKSUM) did not match.
    #[error("{name} mismatch: computed 0x{computed:04x}, received 0x{received:04x}")]
    Checksum16 {
        /// Which checksum: `modbus CRC` or `CHKSUM`.
        name: &'static str,
        /// Checksum computed over the received bytes.
        computed: u16,
        /// Checksum carried by the frame.
        received: u16,
    },
    /// The Pace length checksum nibble did not match the length.
    #[error("LCHKSUM mismatch: computed 0x{computed:x}, received 0x{received:x} for LENID {lenid}")]
    LengthChecksum {
        /// Nibble computed from LENID.
        computed: u8,
        /// Nibble carried by the frame.
        received: u8,
        /// The declared INFO length in characters.
        lenid: u16,
    },
    /// A length field holds a value the protocol does not allow.
    #[error("bad data length byte: 0x{found:02x} (expected 0x{expected:02x})")]
    BadLength {
        /// The only length the protocol allows here.
        expected: u8,
        /// The length found.
        found: u8,
    },
    /// A declared length disagrees with the bytes that arrived.
    #[error("length mismatch: {declared} declared, {actual} present")]
    LengthMismatch {
        /// Length the frame declares.
        declared: usize,
        /// Length actually present.
        actual: usize,
    },
    /// More bytes than the declared length arrived within one frame.
    #[error("oversize frame: {declared} declared, {actual} present")]
    Oversize {
        /// Length the frame declares.
        declared: usize,
        /// Length actually present.
        actual: usize,
    },
    /// A Pace LENID is odd, so INFO cannot be whole bytes.
    #[error("odd LENID {lenid}: INFO must be whole bytes")]
    OddLength {
        /// The declared INFO length in characters.
        lenid: u16,
    },
    /// A character that must be a hex digit is not one.
    #[error("non-hex character 0x{found:02x} at offset {offset}")]
    NonHex {
        /// Offset of the character in the frame.
        offset: usize,
        /// The character found.
        found: u8,
    },
    /// The reply answers a different command than the one asked.
    #[error("unexpected command echo: expected 0x{expected:02x}, got 0x{found:02x}")]
    UnexpectedCommand {
        /// The command that was sent.
        expected: u8,
        /// The command in the reply.
        found: u8,
    },
    /// The reply carries a command this decoder does not know.
    #[error("unknown command 0x{command:02x}")]
    UnknownCommand {
        /// The command byte.
        command: u8,
    },
    /// The frame is our own request looped back by a half-duplex adapter.
    #[error("reply address byte 0x{address:02x} is a host address: local echo, not a BMS reply")]
    HostEcho {
        /// The host address found in the reply.
        address: u8,
    },
    /// The reply comes from another device than the one asked.
    #[error("unexpected reply address: expected 0x{expected:02x}, got 0x{found:02x}")]
    UnexpectedAddress {
        /// Address of the device that was asked.
        expected: u8,
        /// Address in the reply.
        found: u8,
    },
    /// A Modbus exception reply.
    #[error("modbus exception: function 0x{function:02x}, code 0x{code:02x}")]
    ModbusException {
        /// The function code of the request.
        function: u8,
        /// The exception code.
        code: u8,
    },
    /// A Pace reply whose return code is not 0 (normal).
    #[error("Pace return code 0x{rtn:02x} ({})", rtn_name(*.rtn))]
    ReturnCode {
        /// The RTN byte.
        rtn: u8,
    },
    /// A Pace all-packs reply that says it holds no packs.
    #[error("reply holds no packs")]
    NoPacks,
    /// The packs of a multi-pack reply cannot be separated consistently.
    #[error("pack blocks cannot be separated: {info_len} INFO bytes for {packs} packs")]
    LayoutUnresolved {
        /// INFO length in bytes.
        info_len: usize,
        /// Blocks the reply announces.
        packs: usize,
    },
    /// A protocol version this decoder cannot read.
    #[error("unsupported protocol version 0x{version:02x}: {why}")]
    UnsupportedVersion {
        /// The version byte.
        version: u8,
        /// Why it cannot be decoded.
        why: &'static str,
    },
    /// A value is outside what the protocol allows (e.g. a cell count of 200).
    #[error("{field} out of range: {value}")]
    OutOfRange {
        /// The field.
        field: &'static str,
        /// The value found.
        value: u32,
    },
    /// The values decode but cannot be right (e.g. a pack voltage equal to one cell's).
    #[error("implausible reply: {why}")]
    Implausible {
        /// What is implausible.
        why: &'static str,
    },
}

impl DecodeError {
    /// A stable snake_case identifier of the error kind (the `error` names of the shared vectors where they
    /// exist), for tests and structured logs.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Truncated { .. } => "truncated",
            Self::MissingFrame { .. } => "missing_frame",
            Self::NoFrame { .. } => "no_frame",
            Self::BadStart { .. } => "bad_soi",
            Self::MissingEnd { .. } => "missing_eoi",
            Self::Checksum { .. } => "checksum_mismatch",
            Self::Checksum16 { .. } => "chksum_mismatch",
            Self::LengthChecksum { .. } => "lchksum_mismatch",
            Self::BadLength { .. } => "bad_length",
            Self::LengthMismatch { .. } => "length_mismatch",
            Self::Oversize { .. } => "oversize",
            Self::OddLength { .. } => "odd_lenid",
            Self::NonHex { .. } => "non_hex",
            Self::UnexpectedCommand { .. } => "unexpected_command",
            Self::UnknownCommand { .. } => "unknown_command",
            Self::HostEcho { .. } => "host_echo",
            Self::UnexpectedAddress { .. } => "unexpected_address",
            Self::ModbusException { .. } => "modbus_exception",
            Self::ReturnCode { .. } => "rtn_error",
            Self::NoPacks => "no_packs",
            Self::LayoutUnresolved { .. } => "layout_unresolved",
            Self::UnsupportedVersion { .. } => "unsupported_version",
            Self::OutOfRange { .. } => "out_of_range",
            Self::Implausible { .. } => "implausible",
        }
    }

    /// The bounded `reason` label of `bms_poll_failures_total` (`ARCHITECTURE.md#errors-and-failure-reasons`) this
    /// error counts under.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Checksum { .. } | Self::Checksum16 { .. } | Self::LengthChecksum { .. } => "checksum",
            // A reply cut short, by bytes or by whole frames.
            Self::Truncated { .. } | Self::MissingFrame { .. } | Self::NoFrame { .. } => "truncated",
            Self::UnexpectedCommand { .. }
            | Self::UnknownCommand { .. }
            | Self::UnexpectedAddress { .. }
            | Self::ModbusException { .. }
            | Self::ReturnCode { .. } => "unexpected_reply",
            Self::Implausible { .. } => "implausible",
            // Only our own request came back (a half-duplex adapter echoing it): a wiring/adapter matter, told
            // apart from a device that answers wrongly.
            Self::HostEcho { .. } => "echo",
            Self::BadStart { .. }
            | Self::MissingEnd { .. }
            | Self::BadLength { .. }
            | Self::LengthMismatch { .. }
            | Self::Oversize { .. }
            | Self::OddLength { .. }
            | Self::NonHex { .. }
            | Self::NoPacks
            | Self::LayoutUnresolved { .. }
            | Self::UnsupportedVersion { .. }
            | Self::OutOfRange { .. } => "decode",
        }
    }
}

/// The name of a Pace RTN code (`docs/protocols/pace.md#return-codes`); `unknown` for codes no source defines.
#[must_use]
pub fn rtn_name(rtn: u8) -> &'static str {
    match rtn {
        0x00 => "normal",
        0x01 => "version_error",
        0x02 => "chksum_error",
        0x03 => "lchksum_error",
        0x04 => "cid2_invalid",
        0x05 => "command_format_error",
        0x06 => "invalid_data",
        0x07 => "no_data",
        0x09 => "operation_or_write_error",
        0x90 => "adr_error",
        0x91 => "internal_communication_error",
        0xE1 => "cid1_invalid",
        0xE2 => "command_execution_failed",
        0xE3 => "device_fault",
        0xE4 => "permission_denied",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_both_sides_of_a_mismatch() {
        let e = DecodeError::Checksum { computed: 0x0d, received: 0x0e };
        assert_eq!(e.to_string(), "checksum mismatch: computed 0x0d, received 0x0e");
        assert_eq!(e.reason(), "checksum");
        let e = DecodeError::ReturnCode { rtn: 9 };
        assert_eq!(e.to_string(), "Pace return code 0x09 (operation_or_write_error)");
        assert_eq!(e.kind(), "rtn_error");
        assert_eq!(DecodeError::Truncated { have: 9, need: 13 }.to_string(), "truncated frame: 9 of 13 bytes");
    }
}
