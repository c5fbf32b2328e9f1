//! The tiny MLP: its file format, the checks a file must pass, and the
//! forward pass.
//!
//! A model is `input_dim → hidden_dim (ReLU) → output_dim (softmax)`:
//!
//! ```text
//! h = relu(W1 · x + b1)      W1: hidden_dim × input_dim
//! z = W2 · h + b2            W2: output_dim × hidden_dim
//! p = softmax(z)
//! ```
//!
//! The file is JSON (format `gantry-tiny-mlp/v1`), one weight-matrix row per
//! line so a diff of a regenerated file stays readable. Its `checksum` is
//! FNV-1a 64 over the name, the dimensions and the exact bits of every weight
//! (see [`Model::checksum`]), so an edited or truncated-then-repaired file is
//! refused rather than served.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

/// The `format` value this build reads and writes.
pub const FORMAT: &str = "gantry-tiny-mlp/v1";

/// Largest accepted dimension; far above the tiny model, low enough that a
/// corrupt header cannot ask for gigabytes.
pub const MAX_DIM: usize = 4096;

/// The model file built into the binary, so a `FROM scratch` image needs no
/// other file. Regenerate with `gantry-infer --generate-model
/// inference/model/tiny-mlp.json --seed 7` (a unit test checks it matches).
pub const EMBEDDED_MODEL: &[u8] = include_bytes!("../model/tiny-mlp.json");

/// Why a model file was refused. Every message names the field at fault.
#[derive(Debug, Error)]
pub enum ModelError {
    #[error("cannot read model file {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("model file is not valid {FORMAT} JSON: {0}")]
    Parse(serde_json::Error),
    #[error("format: expected {FORMAT:?}, got {0:?}")]
    Format(String),
    #[error("name: expected 1 to 64 characters of [A-Za-z0-9._-], got {0:?}")]
    Name(String),
    #[error("{field}: expected a dimension between 1 and {MAX_DIM}, got {value}")]
    Dimension { field: &'static str, value: usize },
    #[error("{field}: expected {expected} numbers, got {got}")]
    Shape { field: String, expected: usize, got: usize },
    #[error("{field}: not a finite number")]
    NotFinite { field: String },
    #[error("checksum: expected \"fnv1a64:\" and 16 hex digits, got {0:?}")]
    ChecksumSyntax(String),
    #[error("checksum: file states {stated}, its contents hash to {computed}")]
    ChecksumMismatch { stated: String, computed: String },
}

/// A validated model, ready to run.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    name: String,
    seed: Option<u64>,
    input_dim: usize,
    hidden_dim: usize,
    output_dim: usize,
    /// `hidden_dim × input_dim`, row-major.
    w1: Vec<f32>,
    b1: Vec<f32>,
    /// `output_dim × hidden_dim`, row-major.
    w2: Vec<f32>,
    b2: Vec<f32>,
}

/// The weights of a model before validation, as nested rows.
#[derive(Debug, Clone)]
pub struct Weights {
    pub w1: Vec<Vec<f32>>,
    pub b1: Vec<f32>,
    pub w2: Vec<Vec<f32>>,
    pub b2: Vec<f32>,
}

impl Model {
    /// Builds a model, checking the name, dimensions, shapes and that every
    /// weight is finite. `seed` is recorded in the file and otherwise unused.
    pub fn new(name: &str, seed: Option<u64>, weights: Weights) -> Result<Model, ModelError> {
        if !valid_name(name) {
            return Err(ModelError::Name(name.to_owned()));
        }
        let hidden_dim = check_dim("hidden_dim", weights.w1.len())?;
        let input_dim = check_dim("input_dim", weights.w1.first().map_or(0, Vec::len))?;
        let output_dim = check_dim("output_dim", weights.w2.len())?;
        Ok(Model {
            name: name.to_owned(),
            seed,
            input_dim,
            hidden_dim,
            output_dim,
            w1: flatten("w1", &weights.w1, input_dim)?,
            b1: check_vector("b1", weights.b1, hidden_dim)?,
            w2: flatten("w2", &weights.w2, hidden_dim)?,
            b2: check_vector("b2", weights.b2, output_dim)?,
        })
    }

    /// Parses and validates a model file: format, name, declared dimensions
    /// against the weight shapes, finiteness, then the checksum.
    pub fn from_json(bytes: &[u8]) -> Result<Model, ModelError> {
        let file: ModelFile = serde_json::from_slice(bytes).map_err(ModelError::Parse)?;
        if file.format != FORMAT {
            return Err(ModelError::Format(file.format));
        }
        let input_dim = check_dim("input_dim", file.input_dim)?;
        let hidden_dim = check_dim("hidden_dim", file.hidden_dim)?;
        let output_dim = check_dim("output_dim", file.output_dim)?;
        check_len("w1", file.w1.len(), hidden_dim)?;
        check_len("w2", file.w2.len(), output_dim)?;
        // Row lengths are checked against the declared dimensions here, so a
        // short first row is reported as such rather than as a smaller model.
        for (i, row) in file.w1.iter().enumerate() {
            check_len(&format!("w1[{i}]"), row.len(), input_dim)?;
        }
        let stated = parse_checksum(&file.checksum)?;
        let model = Model::new(
            &file.name,
            file.seed,
            Weights { w1: file.w1, b1: file.b1, w2: file.w2, b2: file.b2 },
        )?;
        let computed = model.checksum();
        if computed != stated {
            return Err(ModelError::ChecksumMismatch {
                stated: format_checksum(stated),
                computed: format_checksum(computed),
            });
        }
        Ok(model)
    }

    /// Reads and validates the model file at `path`.
    pub fn load(path: &Path) -> Result<Model, ModelError> {
        let bytes =
            std::fs::read(path).map_err(|source| ModelError::Read { path: path.to_owned(), source })?;
        Model::from_json(&bytes)
    }

    /// The model built into the binary ([`EMBEDDED_MODEL`]).
    pub fn embedded() -> Result<Model, ModelError> {
        Model::from_json(EMBEDDED_MODEL)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn input_dim(&self) -> usize {
        self.input_dim
    }

    pub fn hidden_dim(&self) -> usize {
        self.hidden_dim
    }

    pub fn output_dim(&self) -> usize {
        self.output_dim
    }

    /// FNV-1a 64 over the name, a zero byte, the three dimensions (u64
    /// little-endian), then the bits of w1, b1, w2, b2 (f32 little-endian,
    /// row-major). Hashing bits, not decimal text, makes it independent of how
    /// the JSON numbers are spelled.
    pub fn checksum(&self) -> u64 {
        let mut h = Fnv1a64::new();
        h.write(self.name.as_bytes());
        h.write(&[0]);
        for dim in [self.input_dim, self.hidden_dim, self.output_dim] {
            h.write(&(dim as u64).to_le_bytes());
        }
        for w in self.w1.iter().chain(&self.b1).chain(&self.w2).chain(&self.b2) {
            h.write(&w.to_bits().to_le_bytes());
        }
        h.finish()
    }

    /// Runs one input row and returns the softmax probabilities, or `None`
    /// when the row has the wrong length or the result is not finite (inputs
    /// large enough to overflow f32). Callers validate rows first; `None` is
    /// the backstop, never a panic.
    pub fn infer(&self, x: &[f32]) -> Option<Vec<f32>> {
        if x.len() != self.input_dim {
            return None;
        }
        let hidden: Vec<f32> = self
            .w1
            .chunks_exact(self.input_dim)
            .zip(&self.b1)
            .map(|(row, b)| (dot(row, x) + b).max(0.0))
            .collect();
        let logits: Vec<f32> = self
            .w2
            .chunks_exact(self.hidden_dim)
            .zip(&self.b2)
            .map(|(row, b)| dot(row, &hidden) + b)
            .collect();
        let probs = softmax(&logits);
        probs.iter().all(|p| p.is_finite()).then_some(probs)
    }

    /// The canonical file text: the exact bytes the generator commits.
    pub fn to_json(&self) -> String {
        let mut out = String::new();
        out.push_str("{\n");
        let _ = writeln!(out, "  \"format\": \"{FORMAT}\",");
        // Names are restricted to [A-Za-z0-9._-], so no JSON escaping is needed.
        let _ = writeln!(out, "  \"name\": \"{}\",", self.name);
        if let Some(seed) = self.seed {
            let _ = writeln!(out, "  \"seed\": {seed},");
        }
        let _ = writeln!(out, "  \"input_dim\": {},", self.input_dim);
        let _ = writeln!(out, "  \"hidden_dim\": {},", self.hidden_dim);
        let _ = writeln!(out, "  \"output_dim\": {},", self.output_dim);
        write_matrix(&mut out, "w1", &self.w1, self.input_dim);
        let _ = writeln!(out, "  \"b1\": {},", json_row(&self.b1));
        write_matrix(&mut out, "w2", &self.w2, self.hidden_dim);
        let _ = writeln!(out, "  \"b2\": {},", json_row(&self.b2));
        let _ = writeln!(out, "  \"checksum\": \"{}\"", format_checksum(self.checksum()));
        out.push_str("}\n");
        out
    }
}

/// Index of the largest value (the first one on ties); 0 for an empty slice.
pub fn argmax(values: &[f32]) -> usize {
    values.iter().enumerate().fold(0, |best, (i, v)| if *v > values[best] { i } else { best })
}

/// `fnv1a64:` and 16 lower-case hex digits.
pub fn format_checksum(sum: u64) -> String {
    format!("fnv1a64:{sum:016x}")
}

/// The file as written on disk, before validation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelFile {
    format: String,
    name: String,
    #[serde(default)]
    seed: Option<u64>,
    input_dim: usize,
    hidden_dim: usize,
    output_dim: usize,
    w1: Vec<Vec<f32>>,
    b1: Vec<f32>,
    w2: Vec<Vec<f32>>,
    b2: Vec<f32>,
    checksum: String,
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn check_dim(field: &'static str, value: usize) -> Result<usize, ModelError> {
    if (1..=MAX_DIM).contains(&value) {
        Ok(value)
    } else {
        Err(ModelError::Dimension { field, value })
    }
}

fn check_len(field: &str, got: usize, expected: usize) -> Result<(), ModelError> {
    if got == expected {
        Ok(())
    } else {
        Err(ModelError::Shape { field: field.to_owned(), expected, got })
    }
}

fn check_vector(field: &str, values: Vec<f32>, expected: usize) -> Result<Vec<f32>, ModelError> {
    check_len(field, values.len(), expected)?;
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(ModelError::NotFinite { field: format!("{field}[{i}]") });
    }
    Ok(values)
}

fn flatten(field: &str, rows: &[Vec<f32>], width: usize) -> Result<Vec<f32>, ModelError> {
    let mut flat = Vec::with_capacity(rows.len() * width);
    for (i, row) in rows.iter().enumerate() {
        check_len(&format!("{field}[{i}]"), row.len(), width)?;
        if let Some(j) = row.iter().position(|v| !v.is_finite()) {
            return Err(ModelError::NotFinite { field: format!("{field}[{i}][{j}]") });
        }
        flat.extend_from_slice(row);
    }
    Ok(flat)
}

fn parse_checksum(text: &str) -> Result<u64, ModelError> {
    text.strip_prefix("fnv1a64:")
        .filter(|hex| hex.len() == 16)
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .ok_or_else(|| ModelError::ChecksumSyntax(text.to_owned()))
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Softmax with the maximum subtracted first, so large logits do not overflow.
fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|z| (z - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.iter().map(|e| e / sum).collect()
}

fn json_row(values: &[f32]) -> String {
    // `Display` for f32 prints the shortest text that reads back to the same
    // bits and never uses an exponent, so the output is valid JSON.
    let items: Vec<String> = values.iter().map(|v| v.to_string()).collect();
    format!("[{}]", items.join(", "))
}

fn write_matrix(out: &mut String, field: &str, flat: &[f32], width: usize) {
    let _ = writeln!(out, "  \"{field}\": [");
    let rows: Vec<String> = flat.chunks_exact(width).map(|row| format!("    {}", json_row(row))).collect();
    out.push_str(&rows.join(",\n"));
    out.push_str("\n  ],\n");
}

struct Fnv1a64(u64);

impl Fnv1a64 {
    fn new() -> Self {
        Fnv1a64(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2 → 2 → 2, small enough to work out by hand (see `forward_pass_matches_hand_computation`).
    fn hand_model() -> Model {
        Model::new(
            "hand",
            None,
            Weights {
                w1: vec![vec![1.0, -1.0], vec![0.5, 0.5]],
                b1: vec![0.0, -1.0],
                w2: vec![vec![1.0, 0.0], vec![0.0, 2.0]],
                b2: vec![0.0, 0.5],
            },
        )
        .expect("valid hand model")
    }

    fn assert_close(got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "got {got:?}, want {want:?}");
        }
    }

    #[test]
    fn forward_pass_matches_hand_computation() {
        let m = hand_model();
        // x = [2, 1]: h = relu([2-1+0, 1+0.5-1]) = [1, 0.5]; z = [1, 1+0.5] = [1, 1.5]
        // p = [1/(1+e^0.5), e^0.5/(1+e^0.5)]
        let p = m.infer(&[2.0, 1.0]).expect("finite");
        assert_close(&p, &[0.377_540_67, 0.622_459_3]);
        assert_eq!(argmax(&p), 1);
        // x = [0, 3]: h = relu([-3, 0.5]) = [0, 0.5] (ReLU clips); z = [0, 1.5]
        let p = m.infer(&[0.0, 3.0]).expect("finite");
        assert_close(&p, &[0.182_425_52, 0.817_574_5]);
        // x = [3, 0]: h = [3, 0.5]; z = [3, 1.5] -> class 0 wins
        let p = m.infer(&[3.0, 0.0]).expect("finite");
        assert_close(&p, &[0.817_574_5, 0.182_425_52]);
        assert_eq!(argmax(&p), 0);
    }

    #[test]
    fn infer_refuses_wrong_length_and_overflow() {
        let m = hand_model();
        assert_eq!(m.infer(&[1.0]), None);
        assert_eq!(m.infer(&[f32::MAX, -f32::MAX]), None);
    }

    #[test]
    fn softmax_is_stable_for_large_logits() {
        assert_close(&softmax(&[1000.0, 1000.0]), &[0.5, 0.5]);
    }

    #[test]
    fn argmax_takes_first_of_ties() {
        assert_eq!(argmax(&[0.25, 0.5, 0.5, 0.1]), 1);
        assert_eq!(argmax(&[]), 0);
    }

    #[test]
    fn file_round_trips_through_canonical_text() {
        let m = hand_model();
        let text = m.to_json();
        assert_eq!(Model::from_json(text.as_bytes()).expect("reloads"), m);
    }

    #[test]
    fn embedded_model_is_the_tiny_mlp() {
        let m = Model::embedded().expect("embedded model is valid");
        assert_eq!(m.name(), "tiny-mlp");
        assert_eq!((m.input_dim(), m.hidden_dim(), m.output_dim()), (16, 32, 4));
        let p = m.infer(&[0.5; 16]).expect("finite");
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }

    fn edit(text: &str, from: &str, to: &str) -> String {
        assert!(text.contains(from), "fixture lacks {from:?}");
        text.replacen(from, to, 1)
    }

    fn error_of(text: &str) -> String {
        Model::from_json(text.as_bytes()).expect_err("must be refused").to_string()
    }

    #[test]
    fn validation_names_the_field() {
        let good = hand_model().to_json();
        assert_eq!(
            error_of(&edit(&good, "gantry-tiny-mlp/v1", "gantry-tiny-mlp/v2")),
            "format: expected \"gantry-tiny-mlp/v1\", got \"gantry-tiny-mlp/v2\""
        );
        assert_eq!(
            error_of(&edit(&good, "\"input_dim\": 2", "\"input_dim\": 3")),
            "w1[0]: expected 3 numbers, got 2"
        );
        assert_eq!(
            error_of(&edit(&good, "\"hidden_dim\": 2", "\"hidden_dim\": 0")),
            "hidden_dim: expected a dimension between 1 and 4096, got 0"
        );
        assert_eq!(error_of(&edit(&good, "[0, -1]", "[0]")), "b1: expected 2 numbers, got 1");
        assert_eq!(error_of(&edit(&good, "[0, 0.5]", "[0, 1e39]")), "b2[1]: not a finite number");
        assert_eq!(error_of(&edit(&good, "[1, -1]", "[1, -1e39]")), "w1[0][1]: not a finite number");
        assert_eq!(
            error_of(&edit(&good, "\"hand\"", "\"no spaces\"")),
            "name: expected 1 to 64 characters of [A-Za-z0-9._-], got \"no spaces\""
        );
        assert!(error_of(&edit(&good, "fnv1a64:", "crc32:")).starts_with("checksum: expected \"fnv1a64:\""));
        assert!(error_of(&edit(&good, "\"b2\"", "\"extra\": 1,\n  \"b2\"")).contains("unknown field `extra`"));
        // A changed weight that is still well formed is caught by the checksum.
        let err = error_of(&edit(&good, "[1, -1]", "[1, -0.5]"));
        assert!(err.starts_with("checksum: file states fnv1a64:"), "{err}");
    }

    #[test]
    fn checksum_covers_name_and_every_weight() {
        let base = hand_model();
        let mut renamed = base.clone();
        renamed.name = "hand2".into();
        assert_ne!(base.checksum(), renamed.checksum());
        let mut nudged = base.clone();
        nudged.b2[1] = f32::from_bits(nudged.b2[1].to_bits() + 1);
        assert_ne!(base.checksum(), nudged.checksum());
    }

    #[test]
    fn fnv1a64_known_vectors() {
        let hash = |s: &str| {
            let mut h = Fnv1a64::new();
            h.write(s.as_bytes());
            h.finish()
        };
        assert_eq!(hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(hash("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(hash("foobar"), 0x8594_4171_f739_67e8);
    }
}
