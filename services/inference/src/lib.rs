//! keel inference service
