//! Network drivers: peer connections, the listener, tracker transports, web
//! seed HTTP.
//!
//! Layer: driver. Only `peer_io` touches io_uring sockets; the tracker
//! transports run on the tracker thread's ordinary tokio runtime.

pub mod dht;
pub mod listener;
pub mod mse_io;
pub mod peer_io;
pub mod tracker_http;
pub mod tracker_udp;
pub mod trackers;
pub mod webseed_http;
