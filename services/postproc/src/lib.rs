//! keel postproc service
