//! Request-level errors and their ttrpc status codes.
//!
//! Every module has its own error type; the server turns them into a [`RequestError`], which
//! carries the gRPC code the caller sees (NOT_FOUND, ALREADY_EXISTS, INVALID_ARGUMENT,
//! FAILED_PRECONDITION, DEADLINE_EXCEEDED, INTERNAL).

use ttrpc::Code;

/// An API request that failed, with the status code to report.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct RequestError {
    pub code: Code,
    pub message: String,
}

impl RequestError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Code::INVALID_ARGUMENT, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Code::NOT_FOUND, message)
    }
    pub fn exists(message: impl Into<String>) -> Self {
        Self::new(Code::ALREADY_EXISTS, message)
    }
    pub fn precondition(message: impl Into<String>) -> Self {
        Self::new(Code::FAILED_PRECONDITION, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Code::INTERNAL, message)
    }
    pub fn deadline(message: impl Into<String>) -> Self {
        Self::new(Code::DEADLINE_EXCEEDED, message)
    }
}

impl From<RequestError> for ttrpc::Error {
    fn from(e: RequestError) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code, e.message))
    }
}

/// Result of a request handler.
pub type RequestResult<T> = Result<T, RequestError>;
