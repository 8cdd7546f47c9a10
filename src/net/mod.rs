//! Network drivers: peer connections, the listener, tracker transports.
//!
//! Layer: driver.
