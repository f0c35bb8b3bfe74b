//! What every keel server shares: admin HTTP, gRPC health and reflection, request layers, shutdown
