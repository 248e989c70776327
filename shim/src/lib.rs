//! containerd Task API v2 shim for vessel
