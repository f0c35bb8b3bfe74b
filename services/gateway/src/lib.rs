//! keel gateway service
