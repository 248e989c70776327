//! Task API errors and their ttrpc status codes, matching what containerd 1.6's runc shim
//! returns (containerd turns the codes back into `errdefs` errors):
//! unknown task/exec → NOT_FOUND; kill of an exited process → NOT_FOUND ("process already
//! finished"); kill of an exec not started → FAILED_PRECONDITION; existing id → ALREADY_EXISTS;
//! delete of a running process → FAILED_PRECONDITION.

use vessel_runtime::agent::code;
use vessel_runtime::SandboxError;

/// A Task API call failed.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("{0}: not found")]
    NotFound(String),
    #[error("{0}: already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error("{context}: {source}")]
    Sandbox {
        context: String,
        source: Box<SandboxError>,
    },
    #[error("{0}")]
    Internal(String),
}

/// gRPC/ttrpc status codes used here.
pub mod status {
    pub const UNKNOWN: i32 = 2;
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const NOT_FOUND: i32 = 5;
    pub const ALREADY_EXISTS: i32 = 6;
    pub const FAILED_PRECONDITION: i32 = 9;
    pub const UNIMPLEMENTED: i32 = 12;
    pub const INTERNAL: i32 = 13;
    pub const UNAVAILABLE: i32 = 14;
}

impl TaskError {
    /// Wraps a runtime error with what was being done (`"create c1"`).
    pub fn sandbox(context: impl Into<String>, e: SandboxError) -> TaskError {
        TaskError::Sandbox {
            context: context.into(),
            source: Box::new(e),
        }
    }

    /// The ttrpc status code containerd sees.
    pub fn code(&self) -> i32 {
        match self {
            TaskError::NotFound(_) => status::NOT_FOUND,
            TaskError::AlreadyExists(_) => status::ALREADY_EXISTS,
            TaskError::FailedPrecondition(_) => status::FAILED_PRECONDITION,
            TaskError::InvalidArgument(_) => status::INVALID_ARGUMENT,
            TaskError::Unimplemented(_) => status::UNIMPLEMENTED,
            TaskError::Internal(_) => status::UNKNOWN,
            TaskError::Sandbox { source, .. } => match source.as_ref() {
                SandboxError::Agent(e) => match e.code() {
                    // The agent speaks the same code space; pass its verdicts through.
                    Some(
                        c @ (code::NOT_FOUND
                        | code::ALREADY_EXISTS
                        | code::FAILED_PRECONDITION
                        | code::INVALID_ARGUMENT
                        | code::UNIMPLEMENTED),
                    ) => c,
                    Some(_) => status::UNKNOWN,
                    None => status::UNAVAILABLE,
                },
                SandboxError::Stopped { .. } => status::FAILED_PRECONDITION,
                SandboxError::Share(_) | SandboxError::State(_) => status::INVALID_ARGUMENT,
                _ => status::UNKNOWN,
            },
        }
    }
}

impl From<TaskError> for ttrpc::Error {
    fn from(e: TaskError) -> ttrpc::Error {
        let code = e.code();
        let mut st = ttrpc::Status::new();
        st.code = protobuf::EnumOrUnknown::from_i32(code);
        st.message = e.to_string();
        ttrpc::Error::RpcStatus(st)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vessel_runtime::AgentError;

    fn status_of(e: TaskError) -> (i32, String) {
        match ttrpc::Error::from(e) {
            ttrpc::Error::RpcStatus(s) => (s.code.value(), s.message),
            other => panic!("not a status: {other:?}"),
        }
    }

    #[test]
    fn codes_match_runc_shim() {
        assert_eq!(status_of(TaskError::NotFound("container c1".into())).0, 5);
        assert_eq!(status_of(TaskError::AlreadyExists("c1".into())).0, 6);
        let (c, m) = status_of(TaskError::FailedPrecondition("process not created".into()));
        assert_eq!((c, m.as_str()), (9, "process not created"));
    }

    #[test]
    fn agent_codes_pass_through_and_transport_is_unavailable() {
        let agent = |code| {
            TaskError::sandbox(
                "exec c1/e1",
                SandboxError::Agent(AgentError::Rpc {
                    sandbox: "sb".into(),
                    call: "ExecProcess",
                    code,
                    message: "executable file not found".into(),
                }),
            )
        };
        assert_eq!(agent(5).code(), 5);
        assert_eq!(agent(9).code(), 9);
        assert_eq!(agent(13).code(), status::UNKNOWN);
        let (_, msg) = status_of(agent(5));
        assert!(
            msg.contains("exec c1/e1") && msg.contains("executable file not found"),
            "{msg}"
        );
        let gone = TaskError::sandbox(
            "wait",
            SandboxError::Agent(AgentError::VmGone {
                sandbox: "sb".into(),
                call: "WaitProcess",
            }),
        );
        assert_eq!(gone.code(), status::UNAVAILABLE);
    }
}
