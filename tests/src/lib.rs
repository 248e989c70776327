//! vessel integration tests: VMM boot, agent, shim under containerd
