//! MIG (Multi-Instance GPU) profiles and their placement geometry.
//!
//! A MIG-capable GPU is cut into memory slices and compute (SM) slices; how
//! many depends on the model (8 and 7 on A100/H100/H200/H20/B200, 4 and 4 on
//! an A30). A GPU instance of a profile occupies a contiguous run of memory
//! slices that must start at one of the profile's allowed start slices, and
//! takes some of the compute slices; the hardware refuses to create an
//! instance whose memory slices overlap an existing one (NVML
//! `nvmlDeviceGetGpuInstancePossiblePlacements`, and `nvidia-smi mig -lgipp`).
//! At most one `+me` (media extensions) instance exists per GPU.
//!
//! # Tables
//!
//! Each [`MigGpuTable`] carries its own memory and compute slice counts and
//! its own list of profiles. The numbers are NVIDIA's published ones:
//!
//! - [NVIDIA MIG User Guide, "Supported MIG Profiles"][guide] (the "GPU
//!   Instance Profiles on ..." tables): memory fraction, SM fraction and
//!   "Number of Instances Available" per profile, for A30-24GB, A100-40GB
//!   (and the 80GB names), H100 80GB, H100 94GB, H100 96GB (H100 on GH200),
//!   H200 141GB and B200 180GB.
//! - The valid start slices are what `nvidia-smi mig -lgipp` prints. The
//!   guide prints them for an A100-40GB ("Getting Started with MIG", "List
//!   GPU Instance Profiles"): `{0,1,2,3,4,5,6}:1` (1g), `{0,2,4,6}:2`
//!   (1g with 2/8 memory), `{0,2,4}:2` (2g), `{0,4}:4` (3g), `{0}:4` (4g),
//!   `{0}:8` (7g). (The guide's A100 table gives `1g.10gb` 1/8 of the
//!   memory; its name, the 80GB names and this output say 2/8, which is
//!   what is used.) The same output is published for an H100 NVL (Colfax
//!   Research, "Sharing NVIDIA GPUs at the System Level: Time-Sliced and
//!   MIG-Backed vGPUs", 2024), in third-party transcripts from H100 80GB
//!   systems, and for an A30 (`{0,1,2,3}:1` for 1g and 1g+me, `{0,2}:2`
//!   for 2g and 2g+me, `{0}:4`; it agrees with NVIDIA's go-nvml mock of
//!   the A30, `pkg/nvml/mock/shared/gpus/a30.go`).
//!   For the other 8-slice models (H100 96GB, H20, H200, GH200 144GB,
//!   B200) the starts are *not* printed in NVIDIA's documents: they are
//!   taken to be the same lattice, which agrees with each profile's
//!   published memory fraction and instance count (the tests check the
//!   counts), but is not confirmed from a source.
//! - H20 96GB / 141GB: NVIDIA vGPU Types Reference, "Hopper Architecture
//!   vGPU Types" (MIG-backed vGPU tables: "Corresponding GPU Instance
//!   Profile", slices, maximum per GPU). The MIG User Guide lists the H20
//!   (96GB) as MIG-capable but has no table of its own for it.
//! - GH200 144GB HBM3e: profile names and per-profile instance counts from
//!   NVIDIA's GPU Operator default MIG configuration
//!   (`assets/state-mig-manager/0400_configmap.yaml`, `# GH200 144G HBM3e`
//!   entries: `1g.18gb` x7, `1g.18gb+me` x1, `1g.36gb` x4, `2g.36gb` x3,
//!   `3g.72gb` x2, `4g.72gb` x1, `7g.144gb` x1). The MIG User Guide has no
//!   table for it; memory fractions are inferred from the counts.
//!
//! | table       | memory / compute slices | profiles (memory slices, valid starts)                                                        |
//! |-------------|-------------------------|-----------------------------------------------------------------------------------------------|
//! | A30-24GB    | 4 / 4                   | 1g.6gb(+me) 1 {0,1,2,3}; 2g.12gb(+me) 2 {0,2}; 4g.24gb 4 {0}                                   |
//! | A100-40GB   | 8 / 7                   | 1g.5gb(+me) 1 {0..6}; 1g.10gb 2 {0,2,4,6}; 2g.10gb 2 {0,2,4}; 3g.20gb 4 {0,4}; 4g.20gb 4 {0}; 7g.40gb 8 {0} |
//! | A100-80GB   | 8 / 7                   | 1g.10gb(+me), 1g.20gb, 2g.20gb, 3g.40gb, 4g.40gb, 7g.80gb (as A100-40GB)                       |
//! | H100-80GB   | 8 / 7                   | 1g.10gb(+me), 1g.20gb, 2g.20gb, 3g.40gb, 4g.40gb, 7g.80gb                                      |
//! | H100-94GB   | 8 / 7                   | 1g.12gb(+me), 1g.24gb, 2g.24gb, 3g.47gb, 4g.47gb, 7g.94gb                                      |
//! | H100-96GB   | 8 / 7                   | 1g.12gb(+me), 1g.24gb, 2g.24gb, 3g.48gb, 4g.48gb, 7g.96gb (H100 on GH200)                      |
//! | H20-96GB    | 8 / 7                   | 1g.12gb(+me), 1g.24gb, 2g.24gb, 3g.48gb, 4g.48gb, 7g.96gb                                      |
//! | H20-141GB   | 8 / 7                   | 1g.18gb(+me), 1g.35gb, 2g.35gb, 3g.71gb, 4g.71gb, 7g.141gb                                     |
//! | H200-141GB  | 8 / 7                   | 1g.18gb(+me), 1g.35gb, 2g.35gb, 3g.71gb, 4g.71gb, 7g.141gb                                     |
//! | GH200-144GB | 8 / 7                   | 1g.18gb(+me), 1g.36gb, 2g.36gb, 3g.72gb, 4g.72gb, 7g.144gb                                     |
//! | B200-180GB  | 8 / 7                   | 1g.23gb(+me), 1g.45gb, 2g.45gb, 3g.90gb, 4g.90gb, 7g.180gb                                     |
//!
//! Every 8-slice table has the A100-40GB geometry shown in its row, in the
//! same order (1g, 1g+me, 1g with 2 memory slices, 2g, 3g, 4g, 7g).
//!
//! Not covered (no table, so a GPU of these models in MIG mode cannot be
//! scheduled on): GB200 (the guide lists it as MIG-capable but publishes no
//! profile table; the GPU Operator configuration mixes several GB200
//! variants), B300 / GB300 (not in the guide's tables), the RTX PRO
//! Blackwell boards (in the guide, but with `+gfx`, `-me` and `+me.all`
//! media variants this engine does not model), and the H100 SXM5 64GB (only
//! in the vGPU reference).
//!
//! [guide]: https://docs.nvidia.com/datacenter/tesla/mig-user-guide/supported-mig-profiles.html

use thiserror::Error;

/// Most memory slices any table may have: layouts keep one bit per memory
/// slice in a `u8`. Every NVIDIA MIG GPU so far has 8 or fewer.
pub const MAX_MEMORY_SLICES: u8 = 8;

/// Errors of MIG geometry.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MigError {
    #[error(
        "GPU model {0:?} has no MIG geometry: MIG is not supported on this model, or its profile table is not known (known: {known})",
        known = known_families()
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
    /// Compute slices (the `Ng` part), out of the table's `compute_slices`.
    pub compute_slices: u8,
    /// Memory slices occupied, out of the table's `memory_slices`.
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
    /// Memory slices of the GPU (8 on most models, 4 on an A30).
    pub memory_slices: u8,
    /// Compute slices of the GPU (7 on most models, 4 on an A30).
    pub compute_slices: u8,
    /// Profiles, smallest first.
    pub profiles: &'static [MigProfile],
}

const fn p(
    name: &'static str,
    compute_slices: u8,
    memory_slices: u8,
    starts: &'static [u8],
    media_extensions: bool,
) -> MigProfile {
    MigProfile { name, compute_slices, memory_slices, starts, media_extensions }
}

/// The 8-memory-slice, 7-compute-slice geometry (A100, H100, H20, H200,
/// B200): `names` in the order 1g, 1g+me, 1g with 2 memory slices, 2g, 3g,
/// 4g, 7g.
const fn eight_slices(names: [&'static str; 7]) -> [MigProfile; 7] {
    const ONE: &[u8] = &[0, 1, 2, 3, 4, 5, 6];
    [
        p(names[0], 1, 1, ONE, false),
        p(names[1], 1, 1, ONE, true),
        p(names[2], 1, 2, &[0, 2, 4, 6], false),
        p(names[3], 2, 2, &[0, 2, 4], false),
        p(names[4], 3, 4, &[0, 4], false),
        p(names[5], 4, 4, &[0], false),
        p(names[6], 7, 8, &[0], false),
    ]
}

/// A30 24GB: 4 memory and 4 compute slices (MIG User Guide, "A30 MIG
/// Profiles"; starts from `nvidia-smi mig -lgipp` on an A30).
pub static A30_24GB: MigGpuTable = MigGpuTable {
    family: "A30-24GB",
    memory_slices: 4,
    compute_slices: 4,
    profiles: &[
        p("1g.6gb", 1, 1, &[0, 1, 2, 3], false),
        p("1g.6gb+me", 1, 1, &[0, 1, 2, 3], true),
        p("2g.12gb", 2, 2, &[0, 2], false),
        p("2g.12gb+me", 2, 2, &[0, 2], true),
        p("4g.24gb", 4, 4, &[0], false),
    ],
};
/// A100-SXM4/PCIe 40GB (also A800 40GB: same device group in NVIDIA's GPU
/// Operator MIG configuration).
pub static A100_40GB: MigGpuTable = MigGpuTable {
    family: "A100-40GB",
    memory_slices: 8,
    compute_slices: 7,
    profiles: &eight_slices(["1g.5gb", "1g.5gb+me", "1g.10gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb"]),
};
/// A100 80GB (also A800 80GB). The guide gives the names; the geometry is the A100-40GB's.
pub static A100_80GB: MigGpuTable = MigGpuTable {
    family: "A100-80GB",
    memory_slices: 8,
    compute_slices: 7,
    profiles: &eight_slices(["1g.10gb", "1g.10gb+me", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"]),
};
/// H100 80GB, SXM5 and PCIe (also H800 80GB: same profiles in the vGPU reference).
pub static H100_80GB: MigGpuTable = MigGpuTable {
    family: "H100-80GB",
    memory_slices: 8,
    compute_slices: 7,
    profiles: &eight_slices(["1g.10gb", "1g.10gb+me", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"]),
};
/// H100 94GB: H100 NVL (PCIe) and SXM5 94GB (also H800 NVL).
pub static H100_94GB: MigGpuTable = MigGpuTable {
    family: "H100-94GB",
    memory_slices: 8,
    compute_slices: 7,
    profiles: &eight_slices(["1g.12gb", "1g.12gb+me", "1g.24gb", "2g.24gb", "3g.47gb", "4g.47gb", "7g.94gb"]),
};
/// H100 96GB: the H100 on a GH200 (96GB HBM3; NVML: `NVIDIA GH200 480GB`).
pub static H100_96GB: MigGpuTable = MigGpuTable {
    family: "H100-96GB",
    memory_slices: 8,
    compute_slices: 7,
    profiles: &eight_slices(["1g.12gb", "1g.12gb+me", "1g.24gb", "2g.24gb", "3g.48gb", "4g.48gb", "7g.96gb"]),
};
/// H20 96GB (vGPU reference, "NVIDIA H20 SXM5 96GB"; same names as the H100 96GB).
pub static H20_96GB: MigGpuTable = MigGpuTable {
    family: "H20-96GB",
    memory_slices: 8,
    compute_slices: 7,
    profiles: &eight_slices(["1g.12gb", "1g.12gb+me", "1g.24gb", "2g.24gb", "3g.48gb", "4g.48gb", "7g.96gb"]),
};
/// H20 141GB (vGPU reference, "NVIDIA H20 SXM5 141GB"; same names as the H200).
pub static H20_141GB: MigGpuTable = MigGpuTable {
    family: "H20-141GB",
    memory_slices: 8,
    compute_slices: 7,
    profiles: &eight_slices([
        "1g.18gb",
        "1g.18gb+me",
        "1g.35gb",
        "2g.35gb",
        "3g.71gb",
        "4g.71gb",
        "7g.141gb",
    ]),
};
/// H200 141GB, SXM5 and NVL.
pub static H200_141GB: MigGpuTable = MigGpuTable {
    family: "H200-141GB",
    memory_slices: 8,
    compute_slices: 7,
    profiles: &eight_slices([
        "1g.18gb",
        "1g.18gb+me",
        "1g.35gb",
        "2g.35gb",
        "3g.71gb",
        "4g.71gb",
        "7g.141gb",
    ]),
};
/// GH200 144GB HBM3e (names and counts from NVIDIA's GPU Operator MIG
/// configuration; not in the MIG User Guide's tables).
pub static GH200_144GB: MigGpuTable = MigGpuTable {
    family: "GH200-144GB",
    memory_slices: 8,
    compute_slices: 7,
    profiles: &eight_slices([
        "1g.18gb",
        "1g.18gb+me",
        "1g.36gb",
        "2g.36gb",
        "3g.72gb",
        "4g.72gb",
        "7g.144gb",
    ]),
};
/// B200 (the guide's "B200 180 GB product"; boards sold as 192GB report the
/// same profile names, e.g. `7g.180gb`).
pub static B200_180GB: MigGpuTable = MigGpuTable {
    family: "B200-180GB",
    memory_slices: 8,
    compute_slices: 7,
    profiles: &eight_slices([
        "1g.23gb",
        "1g.23gb+me",
        "1g.45gb",
        "2g.45gb",
        "3g.90gb",
        "4g.90gb",
        "7g.180gb",
    ]),
};

/// Every known table. The first five keep their historical positions.
pub static TABLES: &[&MigGpuTable] = &[
    &A100_40GB,
    &A100_80GB,
    &H100_80GB,
    &H100_94GB,
    &H200_141GB,
    &A30_24GB,
    &H100_96GB,
    &H20_96GB,
    &H20_141GB,
    &GH200_144GB,
    &B200_180GB,
];

/// The families of [`TABLES`], comma-separated (for error messages).
pub fn known_families() -> String {
    TABLES.iter().map(|t| t.family).collect::<Vec<_>>().join(", ")
}

/// The MIG table of a GPU model name as NVML or an operator spells it, if
/// it has one: NVML names (`NVIDIA A30`, `NVIDIA H100 80GB HBM3`,
/// `NVIDIA H100 NVL`, `NVIDIA GH200 480GB`, `NVIDIA H20`, `NVIDIA H200`,
/// `NVIDIA B200`, `A100-SXM4-40GB`), the agent's short names (`H100-94GB`,
/// `GH200-96GB`, `B200-180GB`) and bare families (`H100`, `A30`).
///
/// A family matches only as a whole word start not followed by a digit, so
/// `GH200` is not an `H200`, `GB200` not a `B200`, `H200` not an `H20` and
/// `RTX A3000` not an `A30`. The memory size in the name picks the variant.
pub fn table_for_model(model: &str) -> Option<&'static MigGpuTable> {
    let m = model.to_ascii_uppercase();
    let words: Vec<&str> = m.split(|c: char| !c.is_ascii_alphanumeric()).filter(|w| !w.is_empty()).collect();
    let is = |family: &str| {
        words.iter().any(|w| {
            w.strip_prefix(family).is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
        })
    };
    let sizes: Vec<u32> = words
        .iter()
        .filter_map(|w| {
            let n = w.strip_suffix("GB").or_else(|| w.strip_suffix('G'))?;
            (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())).then(|| n.parse().ok()).flatten()
        })
        .collect();
    let size = |gb: u32| sizes.contains(&gb);
    if is("GB200") || is("GB300") || is("B300") {
        None
    } else if is("GH200") {
        // `NVIDIA GH200 480GB` (480 = CPU + GPU memory) carries the H100 96GB;
        // `NVIDIA GH200 144G HBM3e` the 144GB part. Any other size: not known.
        if size(144) {
            Some(&GH200_144GB)
        } else if size(96) || size(480) || sizes.is_empty() {
            Some(&H100_96GB)
        } else {
            None
        }
    } else if is("H200") {
        Some(&H200_141GB)
    } else if is("H20") {
        if size(141) {
            Some(&H20_141GB)
        } else if size(96) || sizes.is_empty() {
            Some(&H20_96GB)
        } else {
            None
        }
    } else if is("H100") || is("H800") {
        if size(94) || words.iter().any(|w| w.contains("NVL")) {
            Some(&H100_94GB)
        } else if size(96) {
            Some(&H100_96GB)
        } else if size(80) || sizes.is_empty() {
            Some(&H100_80GB)
        } else {
            // e.g. the H100 SXM5 64GB: its profiles (1g.8gb, ...) are not tabled.
            None
        }
    } else if is("A100") || is("A800") {
        Some(if size(80) { &A100_80GB } else { &A100_40GB })
    } else if is("A30") {
        Some(&A30_24GB)
    } else if is("B200") {
        Some(&B200_180GB)
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

    /// Bit mask of all memory slices of this GPU.
    pub fn full_mask(&self) -> u8 {
        ((1u16 << self.memory_slices.min(MAX_MEMORY_SLICES)) - 1) as u8
    }
}

/// Occupancy of one GPU in MIG mode: which memory slices are taken, out of
/// the GPU's own slice counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MigLayout {
    mem_mask: u8,
    compute_used: u8,
    memory_slices: u8,
    compute_slices: u8,
    media_taken: bool,
}

impl MigLayout {
    /// An empty layout (MIG enabled, no instance) of a GPU with `table`'s geometry.
    pub fn new(table: &MigGpuTable) -> Self {
        Self {
            mem_mask: 0,
            compute_used: 0,
            memory_slices: table.memory_slices.min(MAX_MEMORY_SLICES),
            compute_slices: table.compute_slices,
            media_taken: false,
        }
    }

    /// Whether an instance of `profile` could be created at `start` now.
    pub fn can_place(&self, profile: &MigProfile, start: u8) -> bool {
        profile.starts.contains(&start)
            && u16::from(start) + u16::from(profile.memory_slices) <= u16::from(self.memory_slices)
            && self.mem_mask & profile.mask(start) == 0
            && u16::from(self.compute_used) + u16::from(profile.compute_slices)
                <= u16::from(self.compute_slices)
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
        if !profile.starts.contains(&start)
            || self.mem_mask & mask != mask
            || self.compute_used < profile.compute_slices
        {
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

    /// Memory slices of the GPU.
    pub fn memory_slices(&self) -> u8 {
        self.memory_slices
    }

    /// Compute slices of the GPU.
    pub fn compute_slices(&self) -> u8 {
        self.compute_slices
    }

    /// Compute slices still free.
    pub fn free_compute(&self) -> u8 {
        self.compute_slices.saturating_sub(self.compute_used)
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
    use std::collections::HashSet;

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
            let empty = MigLayout::new(t);
            assert_eq!(empty.free_starts(prof).collect::<Vec<_>>(), starts.to_vec(), "{name}");
        }
    }

    /// `nvidia-smi mig -lgipp` on an A30: `{0,1,2,3}:1` (profiles 14 and 21),
    /// `{0,2}:2` (5 and 6), `{0}:4` (0).
    #[test]
    fn a30_placements_match_nvidia_table() {
        let t = &A30_24GB;
        assert_eq!((t.memory_slices, t.compute_slices), (4, 4));
        let expect: [(&str, &[u8], u8, u8); 5] = [
            ("1g.6gb", &[0, 1, 2, 3], 1, 1),
            ("1g.6gb+me", &[0, 1, 2, 3], 1, 1),
            ("2g.12gb", &[0, 2], 2, 2),
            ("2g.12gb+me", &[0, 2], 2, 2),
            ("4g.24gb", &[0], 4, 4),
        ];
        assert_eq!(t.profiles.len(), expect.len());
        for (name, starts, size, compute) in expect {
            let prof = p(t, name);
            assert_eq!(
                (prof.starts, prof.memory_slices, prof.compute_slices),
                (starts, size, compute),
                "{name}"
            );
            assert_eq!(MigLayout::new(t).free_starts(prof).collect::<Vec<_>>(), starts.to_vec(), "{name}");
        }
        // The A100 geometry does not leak in: no 2g at slice 4, no 7-slice anything.
        assert!(matches!(MigLayout::new(t).place(p(t, "2g.12gb"), 4), Err(MigError::InvalidStart { .. })));
    }

    /// MIG User Guide, A30 "Supported Configurations": the full layouts fit
    /// and leave nothing placeable; one `+me` per GPU whichever profile has it.
    #[test]
    fn a30_configurations_fill_the_gpu() {
        let t = &A30_24GB;
        let configs: &[&[(&str, u8)]] = &[
            &[("4g.24gb", 0)],
            &[("2g.12gb", 0), ("2g.12gb", 2)],
            &[("2g.12gb+me", 0), ("2g.12gb", 2)],
            &[("2g.12gb", 0), ("1g.6gb", 2), ("1g.6gb", 3)],
            &[("1g.6gb", 0), ("1g.6gb", 1), ("2g.12gb", 2)],
            &[("1g.6gb+me", 0), ("1g.6gb", 1), ("1g.6gb", 2), ("1g.6gb", 3)],
        ];
        for config in configs {
            let mut layout = MigLayout::new(t);
            for (name, start) in *config {
                layout.place(p(t, name), *start).unwrap();
            }
            assert_eq!(layout.memory_mask(), 0b1111, "{config:?}");
            assert_eq!(layout.free_compute(), 0, "{config:?}");
            for prof in t.profiles {
                assert_eq!(layout.free_starts(prof).count(), 0, "{config:?} + {}", prof.name);
            }
        }
        let mut l = MigLayout::new(t);
        l.place(p(t, "1g.6gb+me"), 0).unwrap();
        assert_eq!(l.place(p(t, "2g.12gb+me"), 2), Err(MigError::MediaExtensionTaken));
        l.place(p(t, "2g.12gb"), 2).unwrap();
        assert_eq!(l.free_compute(), 1);
        assert_eq!(l.free_starts(p(t, "1g.6gb")).collect::<Vec<_>>(), vec![1]);
    }

    /// Each table against its own slice counts: names, compute slices, starts
    /// inside the GPU, one full-GPU profile, distinct families.
    #[test]
    fn every_table_is_well_formed() {
        let mut families = HashSet::new();
        for t in TABLES {
            assert!(families.insert(t.family), "{} twice", t.family);
            assert!(t.memory_slices <= MAX_MEMORY_SLICES && t.memory_slices > 0, "{}", t.family);
            assert!(t.compute_slices > 0 && t.compute_slices <= t.memory_slices, "{}", t.family);
            let mut names = HashSet::new();
            for prof in t.profiles {
                assert!(names.insert(prof.name), "{}: {} twice", t.family, prof.name);
                let g: u8 = prof.name.split('g').next().unwrap().parse().unwrap();
                assert_eq!(g, prof.compute_slices, "{}: {}", t.family, prof.name);
                assert_eq!(prof.name.ends_with("+me"), prof.media_extensions, "{}", prof.name);
                assert!(prof.compute_slices <= t.compute_slices, "{}", prof.name);
                assert!(
                    !prof.starts.is_empty() && prof.starts.windows(2).all(|w| w[0] < w[1]),
                    "{}",
                    prof.name
                );
                for &s in prof.starts {
                    assert!(s + prof.memory_slices <= t.memory_slices, "{}: {} at {s}", t.family, prof.name);
                    assert_eq!(prof.mask(s).count_ones(), u32::from(prof.memory_slices));
                }
            }
            let full: Vec<_> = t.profiles.iter().filter(|q| q.memory_slices == t.memory_slices).collect();
            assert_eq!(full.len(), 1, "{}", t.family);
            assert_eq!(
                (full[0].compute_slices, full[0].starts),
                (t.compute_slices, &[0u8][..]),
                "{}",
                t.family
            );
            assert!(t.profiles.iter().any(|q| q.media_extensions), "{}", t.family);
            assert_eq!(full[0].mask(0), t.full_mask(), "{}", t.family);
        }
    }

    /// The most instances of one profile an empty GPU takes (exhaustive).
    fn max_instances(t: &MigGpuTable, prof: &MigProfile) -> usize {
        fn go(l: MigLayout, prof: &MigProfile) -> usize {
            l.free_starts(prof)
                .map(|s| {
                    let mut next = l;
                    next.place(prof, s).unwrap();
                    1 + go(next, prof)
                })
                .max()
                .unwrap_or(0)
        }
        go(MigLayout::new(t), prof)
    }

    /// NVIDIA's "Number of Instances" column, per table, in profile order.
    #[test]
    fn max_instances_match_nvidia() {
        let eight = [7, 1, 4, 3, 2, 1, 1];
        let expect: &[(&MigGpuTable, &[usize])] = &[
            (&A30_24GB, &[4, 1, 2, 1, 1]),
            (&A100_40GB, &eight),
            (&A100_80GB, &eight),
            (&H100_80GB, &eight),
            (&H100_94GB, &eight),
            (&H100_96GB, &eight),
            (&H20_96GB, &eight),
            (&H20_141GB, &eight),
            (&H200_141GB, &eight),
            (&GH200_144GB, &eight),
            (&B200_180GB, &eight),
        ];
        assert_eq!(expect.len(), TABLES.len());
        for (t, counts) in expect {
            let got: Vec<usize> = t.profiles.iter().map(|prof| max_instances(t, prof)).collect();
            assert_eq!(got, counts.to_vec(), "{}", t.family);
        }
        assert_eq!(max_instances(&A30_24GB, p(&A30_24GB, "1g.6gb")), 4);
        assert_eq!(max_instances(&H100_80GB, p(&H100_80GB, "1g.10gb")), 7);
        assert_eq!(max_instances(&B200_180GB, p(&B200_180GB, "3g.90gb")), 2);
    }

    /// Every layout reachable by creating instances stays within the GPU:
    /// memory slices used = the instances' slices, no more compute than the
    /// GPU has, nothing outside its memory slices.
    #[test]
    fn no_packing_exceeds_the_gpu() {
        for t in TABLES {
            let mut seen = HashSet::new();
            let mut stack = vec![(MigLayout::new(t), 0u8, 0u8)];
            let mut most_compute = 0;
            while let Some((l, mem, compute)) = stack.pop() {
                if !seen.insert(l) {
                    continue;
                }
                assert_eq!(l.memory_mask().count_ones(), u32::from(mem), "{}", t.family);
                assert_eq!(l.memory_mask() & !t.full_mask(), 0, "{}", t.family);
                assert!(compute <= t.compute_slices && mem <= t.memory_slices, "{}", t.family);
                assert_eq!(l.free_compute(), t.compute_slices - compute);
                most_compute = most_compute.max(compute);
                for prof in t.profiles {
                    for s in l.free_starts(prof) {
                        let mut next = l;
                        next.place(prof, s).unwrap();
                        stack.push((next, mem + prof.memory_slices, compute + prof.compute_slices));
                    }
                }
            }
            assert_eq!(most_compute, t.compute_slices, "{}: the GPU can be filled", t.family);
        }
    }

    #[test]
    fn model_names_as_nvml_and_the_agent_spell_them() {
        let family = |m: &str| table_for_model(m).map(|t| t.family);
        let cases: &[(&str, Option<&str>)] = &[
            ("NVIDIA A30", Some("A30-24GB")),
            ("A30-24GB", Some("A30-24GB")),
            ("NVIDIA A30-PCIE-24GB", Some("A30-24GB")),
            ("NVIDIA RTX A3000", None),
            ("A100-SXM4-40GB", Some("A100-40GB")),
            ("A100-SXM4-80GB", Some("A100-80GB")),
            ("NVIDIA A100 80GB PCIe", Some("A100-80GB")),
            ("NVIDIA A800-SXM4-80GB", Some("A100-80GB")),
            ("NVIDIA A800 40GB", Some("A100-40GB")),
            ("H100", Some("H100-80GB")),
            ("NVIDIA H100 80GB HBM3", Some("H100-80GB")),
            ("NVIDIA H100 PCIe", Some("H100-80GB")),
            ("H100-HBM3-80GB", Some("H100-80GB")),
            ("NVIDIA H800", Some("H100-80GB")),
            ("NVIDIA H100 NVL", Some("H100-94GB")),
            ("H100-94GB", Some("H100-94GB")),
            ("NVIDIA H800 NVL", Some("H100-94GB")),
            ("H100-96GB", Some("H100-96GB")),
            ("H100-64GB", None),
            ("NVIDIA GH200 480GB", Some("H100-96GB")),
            ("GH200-96GB", Some("H100-96GB")),
            ("NVIDIA GH200 144G HBM3e", Some("GH200-144GB")),
            ("GH200-144G-HBM3e-144GB", Some("GH200-144GB")),
            ("GH200", Some("H100-96GB")),
            ("NVIDIA GH200 624GB", None),
            ("H20-48GB", None),
            ("NVIDIA H20", Some("H20-96GB")),
            ("H20-96GB", Some("H20-96GB")),
            ("H20-141GB", Some("H20-141GB")),
            ("NVIDIA H200", Some("H200-141GB")),
            ("NVIDIA H200 NVL", Some("H200-141GB")),
            ("H200-141GB", Some("H200-141GB")),
            ("NVIDIA B200", Some("B200-180GB")),
            ("B200-180GB", Some("B200-180GB")),
            ("B200-192GB", Some("B200-180GB")),
            ("NVIDIA GB200", None),
            ("NVIDIA B300 SXM6 AC", None),
            ("NVIDIA L40S", None),
            ("L40S-48GB", None),
            ("Tesla T4", None),
            ("", None),
        ];
        for (name, want) in cases {
            assert_eq!(family(name), *want, "{name:?}");
        }
        let names: Vec<_> = H100_80GB.profiles.iter().map(|p| p.name).collect();
        for core in ["1g.10gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"] {
            assert!(names.contains(&core), "{core}");
        }
        assert!(matches!(H100_80GB.profile("3g.20gb"), Err(MigError::UnknownProfile { .. })));
    }

    #[test]
    fn unsupported_model_lists_every_known_table() {
        let msg = MigError::UnsupportedModel("L40S".into()).to_string();
        assert!(msg.starts_with("GPU model \"L40S\" has no MIG geometry"), "{msg}");
        for t in TABLES {
            assert!(msg.contains(t.family), "{msg}");
        }
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
            let mut layout = MigLayout::new(t);
            for (name, start) in *config {
                layout.place(p(t, name), *start).unwrap();
            }
            // Nothing more fits after a documented full configuration.
            for prof in t.profiles {
                assert_eq!(layout.free_starts(prof).count(), 0, "{config:?} + {}", prof.name);
            }
        }
    }

    #[test]
    fn refuses_what_hardware_refuses() {
        let t = &A100_40GB;
        let mut l = MigLayout::new(t);
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
        let mut seven = MigLayout::new(t);
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
        let l = MigLayout::new(t);
        // A 1g placed at slice 6 keeps 4g@0 and 3g@0 possible; at 0 it would block them.
        let s = l.best_start(t, p(t, "1g.10gb")).unwrap();
        assert!(s >= 4, "chose {s}");
        let mut l2 = l;
        l2.place(p(t, "1g.10gb"), s).unwrap();
        assert!(l2.can_place(p(t, "4g.40gb"), 0));
        assert_eq!(l.best_start(t, p(t, "7g.80gb")), Some(0));
        // On an A30 a 1g goes to the half a 2g does not need first.
        let a30 = &A30_24GB;
        let mut l = MigLayout::new(a30);
        l.place(p(a30, "2g.12gb"), 0).unwrap();
        assert_eq!(l.best_start(a30, p(a30, "2g.12gb")), Some(2));
        assert_eq!(MigLayout::new(a30).best_start(a30, p(a30, "4g.24gb")), Some(0));
    }

    #[test]
    fn remove_restores_capacity() {
        let t = &A100_80GB;
        let mut l = MigLayout::new(t);
        l.place(p(t, "3g.40gb"), 4).unwrap();
        assert!(!l.can_place(p(t, "7g.80gb"), 0));
        l.remove(p(t, "3g.40gb"), 4).unwrap();
        assert!(l.is_empty());
        assert!(l.can_place(p(t, "7g.80gb"), 0));
        assert!(matches!(l.remove(p(t, "3g.40gb"), 4), Err(MigError::NotPlaced { .. })));
        let a30 = &A30_24GB;
        let mut l = MigLayout::new(a30);
        l.place(p(a30, "4g.24gb"), 0).unwrap();
        assert_eq!((l.free_compute(), l.memory_slices(), l.compute_slices()), (0, 4, 4));
        l.remove(p(a30, "4g.24gb"), 0).unwrap();
        assert_eq!(l.free_compute(), 4);
    }
}
