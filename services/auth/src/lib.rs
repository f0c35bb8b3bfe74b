//! keel auth service
