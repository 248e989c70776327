//! Task API errors and their ttrpc status codes. The runtime decides the code
//! ([`vessel_runtime::PodError::code`], matching what containerd 1.6's runc shim answers:
//! unknown task/exec NOT_FOUND, kill of an exited process NOT_FOUND "process already
//! finished", kill of an exec not started FAILED_PRECONDITION, existing id ALREADY_EXISTS,
//! delete of a running process FAILED_PRECONDITION, a lost VM UNAVAILABLE); the message is
//! the error with its causes.

use vessel_protocol::errors::chain;
use vessel_runtime::PodError;

/// A Task API call failed.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error(transparent)]
    Pod(#[from] PodError),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    Internal(String),
}

impl TaskError {
    /// The ttrpc status code containerd sees.
    pub fn code(&self) -> ttrpc::Code {
        match self {
            TaskError::Pod(e) => e.code(),
            TaskError::InvalidArgument(_) => ttrpc::Code::INVALID_ARGUMENT,
            TaskError::Internal(_) => ttrpc::Code::UNKNOWN,
        }
    }

    /// The message containerd shows: the error and its causes.
    pub fn message(&self) -> String {
        match self {
            TaskError::Pod(e) => chain(e),
            other => other.to_string(),
        }
    }
}

impl From<TaskError> for ttrpc::Error {
    fn from(e: TaskError) -> ttrpc::Error {
        let mut st = ttrpc::Status::new();
        st.code = protobuf::EnumOrUnknown::new(e.code());
        st.message = e.message();
        ttrpc::Error::RpcStatus(st)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_of(e: TaskError) -> (ttrpc::Code, String) {
        match ttrpc::Error::from(e) {
            ttrpc::Error::RpcStatus(s) => (s.code.enum_value_or_default(), s.message),
            other => panic!("not a status: {other:?}"),
        }
    }

    #[test]
    fn codes_and_messages_reach_containerd() {
        let (c, m) = status_of(TaskError::Pod(PodError::NotFound {
            what: "container c1".into(),
        }));
        assert_eq!(
            (c, m.as_str()),
            (ttrpc::Code::NOT_FOUND, "container c1: not found")
        );
        let (c, _) = status_of(TaskError::Pod(PodError::AlreadyExists {
            what: "container c1".into(),
        }));
        assert_eq!(c, ttrpc::Code::ALREADY_EXISTS);
        let (c, m) = status_of(TaskError::Pod(PodError::FailedPrecondition(
            "c1/e1: process not created".into(),
        )));
        assert_eq!(
            (c, m.as_str()),
            (
                ttrpc::Code::FAILED_PRECONDITION,
                "c1/e1: process not created"
            )
        );
        let (c, _) = status_of(TaskError::InvalidArgument("bad spec".into()));
        assert_eq!(c, ttrpc::Code::INVALID_ARGUMENT);
    }

    #[test]
    fn io_causes_are_in_the_message_once() {
        let e = PodError::Io {
            context: "create c1: stdio".into(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "opening /x: gone"),
        };
        let (c, m) = status_of(TaskError::Pod(e));
        assert_eq!(c, ttrpc::Code::UNKNOWN);
        assert_eq!(m, "create c1: stdio: opening /x: gone");
    }
}
