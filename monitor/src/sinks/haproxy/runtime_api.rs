//! A client for HAProxy's runtime API (the `stats socket … level admin`), as the adapter
//! uses it: one command per connection, the answer read to EOF.
//!
//! HAProxy's CLI without `prompt` executes one line and closes the connection, answering
//! in plain text. `set server` answers an empty line on success and a sentence on failure
//! (`No such server.`, `No such backend.`, `Permission denied`); those are
//! [`ApiError::Refused`], distinct from transport failures (socket missing, HAProxy
//! restarting, timeouts), which [`ApiError::is_transport`] tells apart so the adapter can
//! back off from the whole endpoint rather than from one server.

use std::{io, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::{TcpStream, UnixStream},
};

use super::servers_state::{self, ServerState, ServersStateError};
pub use crate::config::haproxy::{Endpoint, is_valid_name};

/// Largest answer read (a `show servers state` of a few thousand servers is well below).
pub const MAX_ANSWER_BYTES: u64 = 8 << 20;

/// The administrative state connmon sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum AdminAction {
    /// `set server B/S state maint`: HAProxy stops sending it traffic.
    Maint,
    /// `set server B/S state ready`: back in rotation.
    Ready,
}

impl AdminAction {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot connect to haproxy at {endpoint}: {source}")]
    Connect {
        endpoint: Endpoint,
        #[source]
        source: io::Error,
    },
    #[error("talking to haproxy at {endpoint}: {source}")]
    Io {
        endpoint: Endpoint,
        #[source]
        source: io::Error,
    },
    #[error("haproxy at {endpoint} did not answer within {timeout:?}")]
    Timeout {
        endpoint: Endpoint,
        timeout: Duration,
    },
    #[error("answer from haproxy at {endpoint} exceeds {MAX_ANSWER_BYTES} bytes")]
    TooLarge { endpoint: Endpoint },
    #[error("haproxy refused {command:?}: {answer}")]
    Refused { command: String, answer: String },
    #[error("{command:?}: {source}")]
    ServersState {
        command: String,
        #[source]
        source: ServersStateError,
    },
}

impl ApiError {
    /// The endpoint itself failed (nothing listening, HAProxy restarting, timeout): every
    /// command would fail now. Otherwise HAProxy answered and refused this one command.
    pub fn is_transport(&self) -> bool {
        matches!(
            self,
            ApiError::Connect { .. }
                | ApiError::Io { .. }
                | ApiError::Timeout { .. }
                | ApiError::TooLarge { .. }
        )
    }
}

/// One HAProxy's runtime API.
#[derive(Clone, Debug)]
pub struct RuntimeApi {
    endpoint: Endpoint,
    /// For the whole exchange: connect, write, read to EOF.
    timeout: Duration,
}

impl RuntimeApi {
    pub fn new(endpoint: Endpoint, timeout: Duration) -> Self {
        RuntimeApi { endpoint, timeout }
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Sends one command line and returns HAProxy's whole answer.
    pub async fn command(&self, line: &str) -> Result<String, ApiError> {
        let endpoint = &self.endpoint;
        let exchange = async {
            let refused = |source| ApiError::Connect {
                endpoint: endpoint.clone(),
                source,
            };
            match endpoint {
                Endpoint::Unix(path) => {
                    let stream = UnixStream::connect(path).await.map_err(refused)?;
                    exchange(stream, line, endpoint).await
                }
                Endpoint::Tcp(addr) => {
                    let stream = TcpStream::connect(addr).await.map_err(refused)?;
                    exchange(stream, line, endpoint).await
                }
            }
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| ApiError::Timeout {
                endpoint: endpoint.clone(),
                timeout: self.timeout,
            })?
    }

    /// `set server <backend>/<server> state maint|ready`; Ok only for HAProxy's empty answer.
    pub async fn set_server_state(
        &self,
        backend: &str,
        server: &str,
        action: AdminAction,
    ) -> Result<(), ApiError> {
        let command = format!("set server {backend}/{server} state {}", action.as_str());
        let answer = self.command(&command).await?;
        set_answer(command, &answer)
    }

    /// `show servers state <backend>`, parsed.
    pub async fn show_servers_state(&self, backend: &str) -> Result<Vec<ServerState>, ApiError> {
        let command = format!("show servers state {backend}");
        let answer = self.command(&command).await?;
        servers_state::parse(&answer).map_err(|source| match source {
            ServersStateError::Refused(answer) => ApiError::Refused { command, answer },
            source => ApiError::ServersState { command, source },
        })
    }
}

/// HAProxy answers `set server` with an empty line on success, a sentence otherwise.
fn set_answer(command: String, answer: &str) -> Result<(), ApiError> {
    if answer.trim().is_empty() {
        Ok(())
    } else {
        Err(ApiError::Refused {
            command,
            answer: answer.trim().to_owned(),
        })
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    line: &str,
    endpoint: &Endpoint,
) -> Result<String, ApiError> {
    let io_err = |source| ApiError::Io {
        endpoint: endpoint.clone(),
        source,
    };
    stream
        .write_all(format!("{line}\n").as_bytes())
        .await
        .map_err(io_err)?;
    stream.flush().await.map_err(io_err)?;
    let mut answer = Vec::new();
    (&mut stream)
        .take(MAX_ANSWER_BYTES + 1)
        .read_to_end(&mut answer)
        .await
        .map_err(io_err)?;
    if answer.len() as u64 > MAX_ANSWER_BYTES {
        return Err(ApiError::TooLarge {
            endpoint: endpoint.clone(),
        });
    }
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use tokio::net::UnixListener;

    use super::*;

    fn socket_path(tag: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!(
            "connmon-haproxy-unit-{tag}-{}.sock",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        path
    }

    #[test]
    fn an_empty_answer_is_success_and_text_is_a_refusal() {
        // Answers captured from HAProxy 2.6.12.
        assert!(set_answer("set server proxies/closed state maint".into(), "\n").is_ok());
        let err = set_answer(
            "set server proxies/nope state maint".into(),
            "No such server.\n\n",
        )
        .unwrap_err();
        assert!(!err.is_transport());
        assert_eq!(
            err.to_string(),
            "haproxy refused \"set server proxies/nope state maint\": No such server."
        );
        assert!(
            set_answer(
                "set server nope/x state maint".into(),
                "No such backend.\n\n"
            )
            .is_err()
        );
    }

    #[tokio::test]
    async fn a_missing_socket_is_a_transport_error() {
        let api = RuntimeApi::new(
            Endpoint::Unix(socket_path("missing")),
            Duration::from_secs(1),
        );
        let err = api.command("show info").await.unwrap_err();
        assert!(err.is_transport(), "{err}");
        assert!(
            err.to_string()
                .starts_with("cannot connect to haproxy at /"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_silent_haproxy_times_out() {
        let path = socket_path("silent");
        let listener = UnixListener::bind(&path).unwrap();
        let api = RuntimeApi::new(Endpoint::Unix(path.clone()), Duration::from_millis(200));
        let err = api.command("show info").await.unwrap_err();
        assert!(matches!(err, ApiError::Timeout { .. }), "{err}");
        drop(listener);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn names_that_could_inject_commands_are_invalid() {
        assert!(is_valid_name("proxies") && is_valid_name("be_1.a-b:c"));
        for bad in ["", "a b", "a;shutdown sessions", "a\nb", "a/b"] {
            assert!(!is_valid_name(bad), "{bad:?}");
        }
    }
}
