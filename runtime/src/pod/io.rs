//! A process's stdio paths (containerd's fifos) ↔ the agent's streams.

use std::path::Path;

use super::process::StdioPaths;
use crate::agent::Agent;
use crate::stdio::{
    open_fifo_reader, open_fifo_writer, AgentInput, AgentOutput, Canceller, InputSink, OutputPair,
    ProcessIo,
};

/// Opens the fifos and starts the copy threads for process `exec_id` ("" = init) of `cid`.
/// With a terminal the agent merges stderr into stdout, so only stdout is copied.
pub(crate) fn attach(
    agent: &Agent,
    cid: &str,
    exec_id: &str,
    paths: &StdioPaths,
) -> std::io::Result<ProcessIo> {
    let out_cancel = Canceller::new()?;
    let in_cancel = Canceller::new()?;
    let mut outputs: Vec<OutputPair> = Vec::new();
    let streams: &[(&str, bool)] = if paths.terminal {
        &[(paths.stdout.as_str(), false)]
    } else {
        &[
            (paths.stdout.as_str(), false),
            (paths.stderr.as_str(), true),
        ]
    };
    for (path, stderr) in streams {
        if path.is_empty() {
            continue;
        }
        let writer = open_fifo_writer(Path::new(path), out_cancel.clone())
            .map_err(|e| std::io::Error::new(e.kind(), format!("opening {path}: {e}")))?;
        outputs.push((
            Box::new(AgentOutput {
                agent: agent.clone(),
                container_id: cid.to_string(),
                exec_id: exec_id.to_string(),
                stderr: *stderr,
            }),
            Box::new(writer),
        ));
    }
    let input = if paths.stdin.is_empty() {
        None
    } else {
        let reader = open_fifo_reader(Path::new(&paths.stdin), in_cancel.clone())
            .map_err(|e| std::io::Error::new(e.kind(), format!("opening {}: {e}", paths.stdin)))?;
        Some((
            Box::new(reader) as Box<dyn std::io::Read + Send>,
            Box::new(AgentInput {
                agent: agent.clone(),
                container_id: cid.to_string(),
                exec_id: exec_id.to_string(),
            }) as Box<dyn InputSink>,
        ))
    };
    let label = if exec_id.is_empty() {
        cid.to_string()
    } else {
        format!("{cid}/{exec_id}")
    };
    ProcessIo::start(&label, outputs, input, out_cancel, in_cancel)
}
