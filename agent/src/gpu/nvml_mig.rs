//! Finding an existing MIG instance through NVML's MIG device API, which
//! nvml-wrapper 0.11 does not wrap: the calls go through its `-sys` crate.
//!
//! Read-only: this never creates, destroys or reconfigures anything; the
//! operator owns MIG instances on real hardware.
//!
//! The only `unsafe` in the agent lives here. Each call passes a device
//! handle that nvml-wrapper obtained from the same (reference-counted,
//! already initialised) library, and out-pointers to locals of the exact
//! types the bindings declare; a missing symbol (an old driver) is checked
//! before any call, since the bindings would panic on it.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::os::raw::{c_char, c_uint};
use std::sync::OnceLock;

use nvml_wrapper::Device;
use nvml_wrapper_sys::bindings::{
    nvmlDevice_t, nvmlGpuInstanceInfo_t, nvmlGpuInstance_t, NvmlLib, NVML_DEVICE_UUID_V2_BUFFER_SIZE,
};

/// NVML_SUCCESS.
const SUCCESS: u32 = 0;

/// One MIG device as NVML lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigDevice {
    pub uuid: String,
    /// First memory slice and number of memory slices of its GPU instance.
    pub start: u32,
    pub size: u32,
}

/// The MIG device whose GPU instance starts at `start` and spans
/// `memory_slices` (pure, so the matching is tested without a GPU).
pub fn find(devices: &[MigDevice], start: u8, memory_slices: u8) -> Option<&MigDevice> {
    devices.iter().find(|d| d.start == u32::from(start) && d.size == u32::from(memory_slices))
}

fn lib(path: &str) -> Result<&'static NvmlLib, String> {
    static LIB: OnceLock<Result<NvmlLib, String>> = OnceLock::new();
    // SAFETY: loading libnvidia-ml runs no code beyond the dynamic loader's;
    // nvml-wrapper has already loaded (and initialised) the same library.
    LIB.get_or_init(|| unsafe { NvmlLib::new(path) }.map_err(|e| e.to_string()))
        .as_ref()
        .map_err(Clone::clone)
}

/// Every MIG device of a MIG-enabled GPU, with its GPU instance's placement.
pub fn list(library: &str, device: &Device<'_>) -> Result<Vec<MigDevice>, String> {
    let lib = lib(library)?;
    let available = lib.nvmlDeviceGetMaxMigDeviceCount.is_ok()
        && lib.nvmlDeviceGetMigDeviceHandleByIndex.is_ok()
        && lib.nvmlDeviceGetGpuInstanceId.is_ok()
        && lib.nvmlDeviceGetGpuInstanceById.is_ok()
        && lib.nvmlGpuInstanceGetInfo.is_ok()
        && lib.nvmlDeviceGetUUID.is_ok();
    if !available {
        return Err("the driver's NVML has no MIG device API (driver too old)".into());
    }
    // SAFETY: a valid handle from nvml-wrapper, used while `device` lives.
    let parent: nvmlDevice_t = unsafe { device.handle() };
    let mut count: c_uint = 0;
    // SAFETY: `count` is a valid out-pointer.
    check("max MIG device count", unsafe { lib.nvmlDeviceGetMaxMigDeviceCount(parent, &mut count) })?;
    let mut out = Vec::new();
    for index in 0..count {
        let mut mig: nvmlDevice_t = std::ptr::null_mut();
        // SAFETY: `mig` is a valid out-pointer; an unused index answers NOT_FOUND.
        if unsafe { lib.nvmlDeviceGetMigDeviceHandleByIndex(parent, index, &mut mig) } != SUCCESS {
            continue;
        }
        let mut gi_id: c_uint = 0;
        // SAFETY: `mig` came from NVML just above; `gi_id` is a valid out-pointer.
        check("GPU instance id", unsafe { lib.nvmlDeviceGetGpuInstanceId(mig, &mut gi_id) })?;
        let mut gi: nvmlGpuInstance_t = std::ptr::null_mut();
        // SAFETY: as above.
        check("GPU instance", unsafe { lib.nvmlDeviceGetGpuInstanceById(parent, gi_id, &mut gi) })?;
        // SAFETY: a plain C struct of integers and a pointer, all-zero is valid.
        let mut info: nvmlGpuInstanceInfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `gi` came from NVML; `info` is a valid out-pointer.
        check("GPU instance info", unsafe { lib.nvmlGpuInstanceGetInfo(gi, &mut info) })?;
        let mut buf = [0 as c_char; NVML_DEVICE_UUID_V2_BUFFER_SIZE as usize];
        // SAFETY: `buf` holds `len` bytes; NVML writes a NUL-terminated string.
        check("MIG device UUID", unsafe {
            lib.nvmlDeviceGetUUID(mig, buf.as_mut_ptr(), buf.len() as c_uint)
        })?;
        // SAFETY: NUL-terminated within `buf` on success (the buffer is sized by NVML's constant).
        let uuid = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned();
        out.push(MigDevice { uuid, start: info.placement.start, size: info.placement.size });
    }
    Ok(out)
}

fn check(what: &str, code: u32) -> Result<(), String> {
    if code == SUCCESS {
        Ok(())
    } else {
        Err(format!("NVML {what} failed (code {code})"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(uuid: &str, start: u32, size: u32) -> MigDevice {
        MigDevice { uuid: uuid.into(), start, size }
    }

    #[test]
    fn the_instance_at_the_placements_start_and_size_is_found() {
        let devices = [dev("MIG-a", 0, 4), dev("MIG-b", 4, 2), dev("MIG-c", 6, 1)];
        assert_eq!(find(&devices, 4, 2).map(|d| d.uuid.as_str()), Some("MIG-b"));
        assert_eq!(find(&devices, 6, 1).map(|d| d.uuid.as_str()), Some("MIG-c"));
        // Same start, other size: a different profile, not a match.
        assert_eq!(find(&devices, 4, 1), None);
        assert_eq!(find(&[], 0, 8), None);
    }
}
