//! MIG (Multi-Instance GPU) profiles and their placement geometry.
//!
//! A MIG-capable GPU has 8 memory slices and 7 compute slices. A GPU instance
//! of a profile occupies a contiguous run of memory slices that must start at
//! one of the profile's allowed start slices; the hardware refuses to create an
//! instance whose memory slices overlap an existing one (NVML
//! `nvmlDeviceGetGpuInstancePossiblePlacements`, and `nvidia-smi mig -lgipp`).
//! The tables below are NVIDIA's published placements (MIG User Guide,
//! "Supported MIG Profiles"); all five GPU families share the same geometry and
//! differ only in the profile names:
//!
//! | profile (A100-40GB) | compute | memory slices | valid starts     |
//! |---------------------|---------|---------------|------------------|
//! | 1g.5gb (+me)        | 1       | 1             | 0,1,2,3,4,5,6    |
//! | 1g.10gb             | 1       | 2             | 0,2,4,6          |
//! | 2g.10gb             | 2       | 2             | 0,2,4            |
//! | 3g.20gb             | 3       | 4             | 0,4              |
//! | 4g.20gb             | 4       | 4             | 0                |
//! | 7g.40gb             | 7       | 8             | 0                |
//!
//! At most one `+me` (media extensions) instance exists per GPU.

use thiserror::Error;

/// Memory slices of a MIG-capable GPU.
pub const MEMORY_SLICES: u8 = 8;
/// Compute slices of a MIG-capable GPU.
pub const COMPUTE_SLICES: u8 = 7;

/// Errors of MIG geometry.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MigError {
    #[error(
        "GPU model {0:?} does not support MIG (known: A100-40GB, A100-80GB, H100-80GB, H100-94GB, H200)"
    )]
    UnsupportedModel(String),
    #[error("MIG profile {profile:?} does not exist on {family} (valid: {valid})")]
    UnknownProfile { profile: String, family: &'static str, valid: String },
    #[error("MIG profile {profile} cannot start at memory slice {start} (valid starts: {valid:?})")]
    InvalidStart { profile: &'static str, start: u8, valid: &'static [u8] },
    #[error("MIG profile {profile} at memory slice {start} overlaps an existing instance")]
    Overlap { profile: &'static str, start: u8 },
    #[error("only one media-extension (+me) instance fits on a GPU")]
    MediaExtensionTaken,
    #[error("no instance of {profile} at memory slice {start} to remove")]
    NotPlaced { profile: &'static str, start: u8 },
}

/// One GPU instance profile and where it may be placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigProfile {
    /// NVIDIA's name, e.g. `3g.40gb`.
    pub name: &'static str,
    /// Compute slices (the `Ng` part).
    pub compute_slices: u8,
    /// Memory slices occupied (out of 8).
    pub memory_slices: u8,
    /// Valid first memory slices.
    pub starts: &'static [u8],
    /// A `+me` profile (owns the GPU's media engines).
    pub media_extensions: bool,
}

impl MigProfile {
    /// Bit mask of the memory slices this profile occupies when started at `start`.
    pub fn mask(&self, start: u8) -> u8 {
        let run: u16 = (1u16 << self.memory_slices) - 1;
        ((run << start) & 0xff) as u8
    }
}

/// The MIG profile table of one GPU family.
#[derive(Debug, PartialEq, Eq)]
pub struct MigGpuTable {
    /// Family name, e.g. `H100-80GB`.
    pub family: &'static str,
    /// Profiles, smallest first.
    pub profiles: [MigProfile; 7],
}

const ONE_SLICE: &[u8] = &[0, 1, 2, 3, 4, 5, 6];
const TWO_SLICES_1G: &[u8] = &[0, 2, 4, 6];
const TWO_SLICES_2G: &[u8] = &[0, 2, 4];
const FOUR_SLICES_3G: &[u8] = &[0, 4];
const ONLY_ZERO: &[u8] = &[0];

const fn p(
    name: &'static str,
    compute_slices: u8,
    memory_slices: u8,
    starts: &'static [u8],
    media_extensions: bool,
) -> MigProfile {
    MigProfile { name, compute_slices, memory_slices, starts, media_extensions }
}

const fn table(family: &'static str, names: [&'static str; 7]) -> MigGpuTable {
    MigGpuTable {
        family,
        profiles: [
            p(names[0], 1, 1, ONE_SLICE, false),
            p(names[1], 1, 1, ONE_SLICE, true),
            p(names[2], 1, 2, TWO_SLICES_1G, false),
            p(names[3], 2, 2, TWO_SLICES_2G, false),
            p(names[4], 3, 4, FOUR_SLICES_3G, false),
            p(names[5], 4, 4, ONLY_ZERO, false),
            p(names[6], 7, 8, ONLY_ZERO, false),
        ],
    }
}

/// A100-SXM4/PCIe 40GB.
pub static A100_40GB: MigGpuTable =
    table("A100-40GB", ["1g.5gb", "1g.5gb+me", "1g.10gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb"]);
/// A100 80GB.
pub static A100_80GB: MigGpuTable =
    table("A100-80GB", ["1g.10gb", "1g.10gb+me", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"]);
/// H100 80GB (SXM5 / PCIe).
pub static H100_80GB: MigGpuTable =
    table("H100-80GB", ["1g.10gb", "1g.10gb+me", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"]);
/// H100 NVL 94GB.
pub static H100_94GB: MigGpuTable =
    table("H100-94GB", ["1g.12gb", "1g.12gb+me", "1g.24gb", "2g.24gb", "3g.47gb", "4g.47gb", "7g.94gb"]);
/// H200 141GB.
pub static H200_141GB: MigGpuTable =
    table("H200-141GB", ["1g.18gb", "1g.18gb+me", "1g.35gb", "2g.35gb", "3g.71gb", "4g.71gb", "7g.141gb"]);

/// Every known table.
pub static TABLES: [&MigGpuTable; 5] = [&A100_40GB, &A100_80GB, &H100_80GB, &H100_94GB, &H200_141GB];

/// The MIG table of a GPU model name as NVML or an operator spells it
/// (`A100-SXM4-40GB`, `NVIDIA H100 80GB HBM3`, `H100`, `H200`, ...), if it has one.
pub fn table_for_model(model: &str) -> Option<&'static MigGpuTable> {
    let m = model.to_ascii_uppercase();
    if m.contains("H200") {
        Some(&H200_141GB)
    } else if m.contains("H100") {
        if m.contains("94") || m.contains("NVL") {
            Some(&H100_94GB)
        } else {
            Some(&H100_80GB)
        }
    } else if m.contains("A100") {
        if m.contains("80") {
            Some(&A100_80GB)
        } else {
            Some(&A100_40GB)
        }
    } else {
        None
    }
}

impl MigGpuTable {
    /// Looks a profile up by name.
    pub fn profile(&self, name: &str) -> Result<&MigProfile, MigError> {
        self.profiles.iter().find(|p| p.name == name).ok_or_else(|| MigError::UnknownProfile {
            profile: name.to_string(),
            family: self.family,
            valid: self.profiles.iter().map(|p| p.name).collect::<Vec<_>>().join(", "),
        })
    }
}

/// Occupancy of one GPU in MIG mode: which memory slices are taken.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct MigLayout {
    mem_mask: u8,
    compute_used: u8,
    media_taken: bool,
}

impl MigLayout {
    /// An empty layout (MIG enabled, no instance).
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether an instance of `profile` could be created at `start` now.
    pub fn can_place(&self, profile: &MigProfile, start: u8) -> bool {
        profile.starts.contains(&start)
            && self.mem_mask & profile.mask(start) == 0
            && self.compute_used + profile.compute_slices <= COMPUTE_SLICES
            && !(profile.media_extensions && self.media_taken)
    }

    /// Valid starts for `profile` in this layout, ascending.
    pub fn free_starts<'a>(&'a self, profile: &'a MigProfile) -> impl Iterator<Item = u8> + 'a {
        profile.starts.iter().copied().filter(move |&s| self.can_place(profile, s))
    }

    /// The start to use for `profile`: the one that keeps the most capacity
    /// placeable for the rest of `table` (so small instances do not block big
    /// ones), lowest start on ties. `None` when it fits nowhere.
    pub fn best_start(&self, table: &MigGpuTable, profile: &MigProfile) -> Option<u8> {
        let mut best: Option<(u32, u8)> = None;
        for start in self.free_starts(profile) {
            let mut after = *self;
            after.occupy(profile, start);
            let keep = after.headroom(table);
            if best.is_none_or(|(k, _)| keep > k) {
                best = Some((keep, start));
            }
        }
        best.map(|(_, s)| s)
    }

    /// Creates an instance.
    pub fn place(&mut self, profile: &MigProfile, start: u8) -> Result<(), MigError> {
        if !profile.starts.contains(&start) {
            return Err(MigError::InvalidStart { profile: profile.name, start, valid: profile.starts });
        }
        if profile.media_extensions && self.media_taken {
            return Err(MigError::MediaExtensionTaken);
        }
        if !self.can_place(profile, start) {
            return Err(MigError::Overlap { profile: profile.name, start });
        }
        self.occupy(profile, start);
        Ok(())
    }

    /// Destroys an instance created by [`MigLayout::place`].
    pub fn remove(&mut self, profile: &MigProfile, start: u8) -> Result<(), MigError> {
        let mask = profile.mask(start);
        if !profile.starts.contains(&start) || self.mem_mask & mask != mask {
            return Err(MigError::NotPlaced { profile: profile.name, start });
        }
        self.mem_mask &= !mask;
        self.compute_used -= profile.compute_slices;
        if profile.media_extensions {
            self.media_taken = false;
        }
        Ok(())
    }

    /// Memory slices in use (bit i = slice i).
    pub fn memory_mask(&self) -> u8 {
        self.mem_mask
    }

    /// Compute slices still free.
    pub fn free_compute(&self) -> u8 {
        COMPUTE_SLICES - self.compute_used
    }

    /// Whether no instance exists.
    pub fn is_empty(&self) -> bool {
        self.mem_mask == 0
    }

    /// Sum over profiles of (placements still possible x compute slices): a
    /// measure of how much this layout can still host.
    pub fn headroom(&self, table: &MigGpuTable) -> u32 {
        table
            .profiles
            .iter()
            .filter(|p| !p.media_extensions)
            .map(|p| self.free_starts(p).count() as u32 * u32::from(p.compute_slices))
            .sum()
    }

    fn occupy(&mut self, profile: &MigProfile, start: u8) {
        self.mem_mask |= profile.mask(start);
        self.compute_used += profile.compute_slices;
        if profile.media_extensions {
            self.media_taken = true;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn p(t: &'static MigGpuTable, name: &str) -> &'static MigProfile {
        t.profile(name).unwrap()
    }

    /// `nvidia-smi mig -lgipp` on an A100-SXM4-40GB.
    #[test]
    fn a100_40gb_placements_match_nvidia_table() {
        let t = &A100_40GB;
        let expect: [(&str, &[u8], u8); 7] = [
            ("1g.5gb", &[0, 1, 2, 3, 4, 5, 6], 1),
            ("1g.5gb+me", &[0, 1, 2, 3, 4, 5, 6], 1),
            ("1g.10gb", &[0, 2, 4, 6], 2),
            ("2g.10gb", &[0, 2, 4], 2),
            ("3g.20gb", &[0, 4], 4),
            ("4g.20gb", &[0], 4),
            ("7g.40gb", &[0], 8),
        ];
        for (name, starts, size) in expect {
            let prof = p(t, name);
            assert_eq!(prof.starts, starts, "{name}");
            assert_eq!(prof.memory_slices, size, "{name}");
            let empty = MigLayout::new();
            assert_eq!(empty.free_starts(prof).collect::<Vec<_>>(), starts.to_vec(), "{name}");
        }
    }

    #[test]
    fn h100_names_and_lookup() {
        assert_eq!(table_for_model("NVIDIA H100 80GB HBM3").unwrap().family, "H100-80GB");
        assert_eq!(table_for_model("H100").unwrap().family, "H100-80GB");
        assert_eq!(table_for_model("NVIDIA H100 NVL").unwrap().family, "H100-94GB");
        assert_eq!(table_for_model("A100-SXM4-40GB").unwrap().family, "A100-40GB");
        assert_eq!(table_for_model("A100-SXM4-80GB").unwrap().family, "A100-80GB");
        assert_eq!(table_for_model("NVIDIA H200").unwrap().family, "H200-141GB");
        assert!(table_for_model("Tesla T4").is_none());
        let names: Vec<_> = H100_80GB.profiles.iter().map(|p| p.name).collect();
        for core in ["1g.10gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"] {
            assert!(names.contains(&core), "{core}");
        }
        assert!(matches!(H100_80GB.profile("3g.20gb"), Err(MigError::UnknownProfile { .. })));
    }

    /// Documented full configurations of an A100/H100 (MIG User Guide, "Supported Configurations").
    #[test]
    fn documented_configurations_fit_exactly() {
        let t = &H100_80GB;
        let configs: &[&[(&str, u8)]] = &[
            &[("7g.80gb", 0)],
            &[("4g.40gb", 0), ("2g.20gb", 4), ("1g.10gb", 6)],
            &[("4g.40gb", 0), ("1g.10gb", 4), ("1g.10gb", 5), ("1g.10gb", 6)],
            &[("3g.40gb", 0), ("3g.40gb", 4)],
            &[("2g.20gb", 0), ("2g.20gb", 2), ("3g.40gb", 4)],
            &[("2g.20gb", 0), ("2g.20gb", 2), ("2g.20gb", 4), ("1g.10gb", 6)],
            &[("1g.20gb", 0), ("1g.20gb", 2), ("1g.20gb", 4), ("1g.20gb", 6)],
            &[
                ("1g.10gb", 0),
                ("1g.10gb", 1),
                ("1g.10gb", 2),
                ("1g.10gb", 3),
                ("1g.10gb", 4),
                ("1g.10gb", 5),
                ("1g.10gb", 6),
            ],
        ];
        for config in configs {
            let mut layout = MigLayout::new();
            for (name, start) in *config {
                layout.place(p(t, name), *start).unwrap();
            }
            // Nothing more fits after a documented full configuration.
            for prof in &t.profiles {
                assert_eq!(layout.free_starts(prof).count(), 0, "{config:?} + {}", prof.name);
            }
        }
    }

    #[test]
    fn refuses_what_hardware_refuses() {
        let t = &A100_40GB;
        let mut l = MigLayout::new();
        assert!(matches!(l.place(p(t, "2g.10gb"), 6), Err(MigError::InvalidStart { .. })));
        assert!(matches!(l.place(p(t, "1g.10gb"), 1), Err(MigError::InvalidStart { .. })));
        assert!(matches!(l.place(p(t, "3g.20gb"), 2), Err(MigError::InvalidStart { .. })));
        l.place(p(t, "1g.5gb"), 3).unwrap();
        // Slice 3 is taken: no 4g, no 3g at 0, no 7g; 3g at 4 still fits.
        assert_eq!(l.free_starts(p(t, "4g.20gb")).count(), 0);
        assert_eq!(l.free_starts(p(t, "3g.20gb")).collect::<Vec<_>>(), vec![4]);
        assert_eq!(l.free_starts(p(t, "7g.40gb")).count(), 0);
        assert!(matches!(l.place(p(t, "2g.10gb"), 2), Err(MigError::Overlap { .. })));
        l.place(p(t, "1g.5gb+me"), 0).unwrap();
        assert_eq!(l.place(p(t, "1g.5gb+me"), 1), Err(MigError::MediaExtensionTaken));
        // Slice 7 alone cannot host any instance.
        let mut seven = MigLayout::new();
        for s in 0..7 {
            seven.place(p(t, "1g.5gb"), s).unwrap();
        }
        assert_eq!(seven.memory_mask(), 0x7f);
        assert_eq!(seven.free_compute(), 0);
        assert!(t.profiles.iter().all(|prof| seven.free_starts(prof).count() == 0));
    }

    #[test]
    fn best_start_keeps_big_profiles_placeable() {
        let t = &H100_80GB;
        let l = MigLayout::new();
        // A 1g placed at slice 6 keeps 4g@0 and 3g@0 possible; at 0 it would block them.
        let s = l.best_start(t, p(t, "1g.10gb")).unwrap();
        assert!(s >= 4, "chose {s}");
        let mut l2 = l;
        l2.place(p(t, "1g.10gb"), s).unwrap();
        assert!(l2.can_place(p(t, "4g.40gb"), 0));
        assert_eq!(l.best_start(t, p(t, "7g.80gb")), Some(0));
    }

    #[test]
    fn remove_restores_capacity() {
        let t = &A100_80GB;
        let mut l = MigLayout::new();
        l.place(p(t, "3g.40gb"), 4).unwrap();
        assert!(!l.can_place(p(t, "7g.80gb"), 0));
        l.remove(p(t, "3g.40gb"), 4).unwrap();
        assert!(l.is_empty());
        assert!(l.can_place(p(t, "7g.80gb"), 0));
        assert!(matches!(l.remove(p(t, "3g.40gb"), 4), Err(MigError::NotPlaced { .. })));
    }
}
