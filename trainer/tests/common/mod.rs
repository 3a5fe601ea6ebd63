//! Helpers shared by the parity tests: reading the reference files that
//! transformers and PEFT wrote, and comparing numbers; [`engines`] for the
//! tests that hold the fused step to the graph.

#![allow(dead_code)]

pub mod engines;

use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

/// `tests/fixtures/<rel>` of the workspace.
pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(rel)
}

/// A reference safetensors file, decoded to f64 per tensor.
pub struct Reference {
    bytes: Vec<u8>,
}

impl Reference {
    pub fn open(path: &Path) -> Reference {
        Reference {
            bytes: std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        }
    }

    pub fn names(&self) -> Vec<String> {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        st.names().into_iter().map(str::to_string).collect()
    }

    /// Shape and values of `name` (F32 or I64) as f64.
    pub fn get(&self, name: &str) -> (Vec<usize>, Vec<f64>) {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let view = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        let values = match view.dtype() {
            Dtype::F32 => view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
                .collect(),
            Dtype::I64 => view
                .data()
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64)
                .collect(),
            other => panic!("unexpected dtype {other:?} for {name}"),
        };
        (view.shape().to_vec(), values)
    }

    pub fn ids(&self, name: &str) -> (Vec<usize>, Vec<i64>) {
        let (shape, v) = self.get(name);
        (shape, v.into_iter().map(|x| x as i64).collect())
    }
}

/// Largest absolute difference between `got` and `want`: NaN if either
/// holds a NaN, so that no tolerance passes it.
pub fn max_abs_diff(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "lengths differ");
    got.iter()
        .zip(want)
        .map(|(&a, &b)| (a as f64 - b).abs())
        .fold(0.0, worse)
}

/// The larger of two differences, NaN if either is (`f64::max` would
/// drop a NaN and let a broken value pass a tolerance).
pub fn worse<F: Into<f64> + Copy + PartialOrd>(m: F, d: F) -> F {
    let nan = |x: F| x.into().is_nan();
    if nan(m) || (!nan(d) && m >= d) { m } else { d }
}
