//! Tracker protocol codecs (HTTP BEP 3/23/7, UDP BEP 15/41) and the BEP 12
//! tier schedule.
//!
//! Layer: pure core.
