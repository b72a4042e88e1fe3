//! One worker task per bus: owns the port, serialises every device on it, and shares each poll.
