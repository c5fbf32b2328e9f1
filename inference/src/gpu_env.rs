//! What the server reports about the GPU it was given: the variables the
//! container runtime, CUDA MPS and the Gantry agent set, read once at start.
//!
//! This server never touches the GPU itself; end-to-end tests use the report
//! to check that the agent handed the container the allocation it planned.

use std::collections::BTreeMap;
use std::ffi::OsStr;

use serde::Serialize;

/// Variables reported by exact name.
pub const GPU_VARS: &[&str] = &[
    "CUDA_VISIBLE_DEVICES",
    "NVIDIA_VISIBLE_DEVICES",
    "CUDA_MPS_PIPE_DIRECTORY",
    "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE",
    "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT",
];

/// Every variable with this prefix is reported too (`GANTRY_ALLOC_ID`,
/// `GANTRY_GPU_MODE`, `GANTRY_MIG_PROFILE`, ...).
pub const GANTRY_PREFIX: &str = "GANTRY_";

/// Reported in place of the value of a `GANTRY_*` variable whose name looks
/// like a credential: the report is served to anyone who can reach the port.
pub const REDACTED: &str = "<redacted>";

/// The reported variables, sorted by name; serialises as a JSON object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct GpuEnv(BTreeMap<String, String>);

impl GpuEnv {
    /// Picks the reported variables out of `vars`. Names that are not UTF-8
    /// are skipped; values that are not UTF-8 are reported lossily.
    pub fn from_vars<I, K, V>(vars: I) -> GpuEnv
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        let mut found = BTreeMap::new();
        for (name, value) in vars {
            let Some(name) = name.as_ref().to_str() else { continue };
            let value = if GPU_VARS.contains(&name) {
                value.as_ref().to_string_lossy().into_owned()
            } else if name.starts_with(GANTRY_PREFIX) {
                if looks_secret(name) {
                    REDACTED.to_owned()
                } else {
                    value.as_ref().to_string_lossy().into_owned()
                }
            } else {
                continue;
            };
            found.insert(name.to_owned(), value);
        }
        GpuEnv(found)
    }

    /// Reads this process's environment.
    pub fn from_process() -> GpuEnv {
        GpuEnv::from_vars(std::env::vars_os())
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn looks_secret(name: &str) -> bool {
    ["TOKEN", "SECRET", "PASSWORD", "CREDENTIAL", "PRIVATE_KEY", "API_KEY"]
        .iter()
        .any(|word| name.contains(word))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_gpu_and_gantry_variables_only() {
        let env = GpuEnv::from_vars([
            ("CUDA_VISIBLE_DEVICES", "GPU-1234"),
            ("NVIDIA_VISIBLE_DEVICES", "0,1"),
            ("CUDA_MPS_PIPE_DIRECTORY", "/tmp/mps"),
            ("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "25"),
            ("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT", "0=4G"),
            ("GANTRY_ALLOC_ID", "a-17"),
            ("GANTRY_MIG_PROFILE", "1g.10gb"),
            ("PATH", "/usr/bin"),
            ("CUDA_HOME", "/usr/local/cuda"),
            ("gantry_lower", "x"),
        ]);
        let json = serde_json::to_string(&env).expect("serialises");
        assert_eq!(
            json,
            r#"{"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE":"25","CUDA_MPS_PINNED_DEVICE_MEM_LIMIT":"0=4G","#
                .to_owned()
                + r#""CUDA_MPS_PIPE_DIRECTORY":"/tmp/mps","CUDA_VISIBLE_DEVICES":"GPU-1234","#
                + r#""GANTRY_ALLOC_ID":"a-17","GANTRY_MIG_PROFILE":"1g.10gb","NVIDIA_VISIBLE_DEVICES":"0,1"}"#
        );
    }

    #[test]
    fn empty_environment_reports_an_empty_object() {
        let env = GpuEnv::from_vars(Vec::<(String, String)>::new());
        assert!(env.is_empty());
        assert_eq!(serde_json::to_string(&env).expect("serialises"), "{}");
    }

    #[test]
    fn credential_like_gantry_variables_are_redacted() {
        let env = GpuEnv::from_vars([("GANTRY_JOIN_TOKEN", "s3cret"), ("GANTRY_GPU_MODE", "mps")]);
        assert_eq!(env.get("GANTRY_JOIN_TOKEN"), Some(REDACTED));
        assert_eq!(env.get("GANTRY_GPU_MODE"), Some("mps"));
    }

    #[cfg(unix)]
    #[test]
    fn non_utf8_values_are_reported_lossily() {
        use std::ffi::OsString;
        use std::os::unix::ffi::OsStringExt;
        let env = GpuEnv::from_vars([(OsString::from("GANTRY_X"), OsString::from_vec(vec![b'a', 0xff]))]);
        assert_eq!(env.get("GANTRY_X"), Some("a\u{fffd}"));
    }
}
