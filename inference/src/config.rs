//! Where the server listens: `--listen`, else the port the agent assigned
//! (`GANTRY_PORT_HTTP`), else the conventional `PORT`, else 8080 — on all
//! interfaces, as a container must.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use thiserror::Error;

/// Port used when neither `--listen` nor a port variable is given; the
/// image's `EXPOSE`.
pub const DEFAULT_PORT: u16 = 8080;

/// Address used with a port taken from the environment.
pub const ANY_V4: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{var}: expected a port number 0-65535, got {value:?}")]
    Port { var: &'static str, value: String },
}

/// Picks the listen address. An explicit `--listen` wins; an empty variable
/// counts as unset; a malformed one is an error, not silently skipped, so a
/// wrong port assignment fails at start instead of listening elsewhere.
pub fn resolve_listen(
    flag: Option<SocketAddr>,
    gantry_port_http: Option<&str>,
    port: Option<&str>,
) -> Result<SocketAddr, ConfigError> {
    if let Some(addr) = flag {
        return Ok(addr);
    }
    for (var, value) in [("GANTRY_PORT_HTTP", gantry_port_http), ("PORT", port)] {
        match value.map(str::trim) {
            None | Some("") => continue,
            Some(text) => {
                let port =
                    text.parse::<u16>().map_err(|_| ConfigError::Port { var, value: text.to_owned() })?;
                return Ok(SocketAddr::new(ANY_V4, port));
            }
        }
    }
    Ok(SocketAddr::new(ANY_V4, DEFAULT_PORT))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    #[test]
    fn precedence_is_flag_then_gantry_then_port_then_default() {
        let flag = Some(addr("127.0.0.1:9000"));
        assert_eq!(resolve_listen(flag, Some("7001"), Some("7002")), Ok(addr("127.0.0.1:9000")));
        assert_eq!(resolve_listen(None, Some("7001"), Some("7002")), Ok(addr("0.0.0.0:7001")));
        assert_eq!(resolve_listen(None, None, Some("7002")), Ok(addr("0.0.0.0:7002")));
        assert_eq!(resolve_listen(None, Some(""), Some(" 7002 ")), Ok(addr("0.0.0.0:7002")));
        assert_eq!(resolve_listen(None, None, None), Ok(addr("0.0.0.0:8080")));
    }

    #[test]
    fn malformed_port_names_the_variable() {
        let err = resolve_listen(None, Some("http"), Some("7002")).expect_err("refused");
        assert_eq!(err.to_string(), "GANTRY_PORT_HTTP: expected a port number 0-65535, got \"http\"");
        let err = resolve_listen(None, None, Some("70000")).expect_err("refused");
        assert_eq!(err.to_string(), "PORT: expected a port number 0-65535, got \"70000\"");
    }
}
