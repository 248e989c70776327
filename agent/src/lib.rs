//! vessel's in-guest agent: PID 1, ttrpc API on vsock, containers in namespaces
