//! Network drivers: peer connections, the listener, tracker transports.
//!
//! Layer: driver. Only `peer_io` touches io_uring sockets.

pub mod peer_io;
