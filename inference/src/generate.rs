//! The deterministic generator behind the committed `model/tiny-mlp.json`.
//!
//! Weights come from SplitMix64 (written out here rather than borrowed from a
//! crate, so a dependency update can never change the committed file) and are
//! quantised to multiples of 1/256: such values are exact in f32, f64 and
//! short decimal text, so the file reads back to exactly the generated bits.

use crate::model::{Model, ModelError, Weights};

/// The seed of the committed model file.
pub const DEFAULT_SEED: u64 = 7;

/// Shape and name of the committed model.
pub const TINY_MLP: ModelShape =
    ModelShape { name: "tiny-mlp", input_dim: 16, hidden_dim: 32, output_dim: 4 };

/// What to generate.
#[derive(Debug, Clone, Copy)]
pub struct ModelShape {
    pub name: &'static str,
    pub input_dim: usize,
    pub hidden_dim: usize,
    pub output_dim: usize,
}

/// Generates a model of `shape` from `seed`; the same inputs always give the
/// same bits. Weights lie in [-0.25, 0.25], biases in [-0.0625, 0.0625].
pub fn generate(shape: ModelShape, seed: u64) -> Result<Model, ModelError> {
    let mut rng = SplitMix64(seed);
    let mut matrix = |rows: usize, cols: usize, span: u64| -> Vec<Vec<f32>> {
        (0..rows).map(|_| (0..cols).map(|_| rng.quantised(span)).collect()).collect()
    };
    let w1 = matrix(shape.hidden_dim, shape.input_dim, 64);
    let b1 = matrix(1, shape.hidden_dim, 16).concat();
    let w2 = matrix(shape.output_dim, shape.hidden_dim, 64);
    let b2 = matrix(1, shape.output_dim, 16).concat();
    Model::new(shape.name, Some(seed), Weights { w1, b1, w2, b2 })
}

struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// k / 256 for k uniform in [-span, span]. The modulo bias is irrelevant
    /// at these spans.
    fn quantised(&mut self, span: u64) -> f32 {
        let k = (self.next() % (2 * span + 1)) as i32 - span as i32;
        k as f32 / 256.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::EMBEDDED_MODEL;

    #[test]
    fn committed_model_file_is_what_the_generator_writes() {
        let generated = generate(TINY_MLP, DEFAULT_SEED).expect("generates").to_json();
        let committed = std::str::from_utf8(EMBEDDED_MODEL).expect("utf-8");
        assert!(
            generated == committed,
            "inference/model/tiny-mlp.json is stale; regenerate with \
             `cargo run -p gantry-infer -- --generate-model inference/model/tiny-mlp.json --seed {DEFAULT_SEED}`"
        );
    }

    #[test]
    fn generation_is_deterministic_and_seed_dependent() {
        let a = generate(TINY_MLP, 1).expect("generates");
        assert_eq!(a, generate(TINY_MLP, 1).expect("generates"));
        assert_ne!(a.checksum(), generate(TINY_MLP, 2).expect("generates").checksum());
    }

    #[test]
    fn splitmix64_reference_values() {
        // First outputs for seed 1234567 from the reference C implementation.
        let mut rng = SplitMix64(1_234_567);
        assert_eq!(rng.next(), 6_457_827_717_110_365_317);
        assert_eq!(rng.next(), 3_203_168_211_198_807_973);
    }
}
