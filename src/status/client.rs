//! The CLI's side of the socket: one request, one response, blocking.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::{ErrorBody, Request};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {path}: {source} (is the agent running? is --socket right? are you in its group?)")]
    Connect { path: String, source: std::io::Error },
    #[error("status socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("the agent answered something that is not a response: {0}")]
    Protocol(String),
    #[error("the agent closed the connection without an answer (is it stopping?)")]
    Closed,
    #[error("{}: {}", .0.code, .0.message)]
    Remote(ErrorBody),
}

/// Sends one request and returns its `result`.
pub fn call(socket: &Path, request: &Request) -> Result<Value, ClientError> {
    let mut stream = UnixStream::connect(socket)
        .map_err(|source| ClientError::Connect { path: socket.display().to_string(), source })?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let line = serde_json::to_string(request).map_err(|e| ClientError::Protocol(e.to_string()))?;
    // A busy or stopping agent may answer and hang up before the request is written: a
    // failed write still reads what it said.
    let written = stream.write_all(format!("{line}\n").as_bytes());
    let mut answer = String::new();
    let read = BufReader::new(&stream).read_line(&mut answer);
    if answer.is_empty() {
        written?;
        read?;
        return Err(ClientError::Closed);
    }
    let v: Value = serde_json::from_str(&answer).map_err(|_| ClientError::Protocol(answer.clone()))?;
    match v.get("ok").and_then(Value::as_bool) {
        Some(true) => Ok(v.get("result").cloned().unwrap_or(Value::Null)),
        Some(false) => {
            let e: ErrorBody = serde_json::from_value(v.get("error").cloned().unwrap_or(Value::Null))
                .map_err(|_| ClientError::Protocol(answer.clone()))?;
            Err(ClientError::Remote(e))
        }
        None => Err(ClientError::Protocol(answer)),
    }
}
