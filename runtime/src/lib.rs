//! vessel's sandbox lifecycle: VMM process, agent connection, containers, config
