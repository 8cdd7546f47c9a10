//! Network drivers: peer connections, the listener, tracker transports.
//!
//! Layer: driver.

pub mod tracker_http;
pub mod tracker_udp;
pub mod trackers;
