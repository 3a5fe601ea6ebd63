//! Comparing adapters: [`AdapterTensors`] reads a PEFT folder's
//! `adapter_model.safetensors` (through `trainer`'s safetensors reader), and
//! [`deviation`] is how far one adapter is from a reference: per tensor
//! ‖a − b‖ / ‖b‖ with b the reference, the largest over the tensors; 0
//! when they are bit-identical.
//!
//! Not here: fetching the adapter (the coordinator's download, `drive`).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, bail};

/// An adapter's tensors by name, as f32.
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterTensors(BTreeMap<String, Vec<f32>>);

impl AdapterTensors {
    /// Reads `dir/adapter_model.safetensors`.
    pub fn read(dir: &Path) -> anyhow::Result<AdapterTensors> {
        let path = dir.join("adapter_model.safetensors");
        let weights = trainer::model::hf::read_safetensors_file(&path)
            .with_context(|| format!("cannot read the adapter {}", path.display()))?;
        let tensors = weights
            .names()
            .filter_map(|name| Some((name.to_string(), weights.get(name)?.data.clone())))
            .collect();
        Ok(AdapterTensors(tensors))
    }
}

/// The largest per-tensor ‖a − b‖ / ‖b‖ of `adapter` against `reference`
/// (b); an error if they do not hold the same tensors.
pub fn deviation(adapter: &AdapterTensors, reference: &AdapterTensors) -> anyhow::Result<f64> {
    let mut worst = 0.0f64;
    for (name, b) in &reference.0 {
        let Some(a) = adapter.0.get(name) else {
            bail!("the adapter has no tensor {name}");
        };
        if a.len() != b.len() {
            bail!(
                "tensor {name} has {} values, the reference {}",
                a.len(),
                b.len()
            );
        }
        let diff: f64 = a
            .iter()
            .zip(b)
            .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
            .sum();
        if diff == 0.0 {
            continue;
        }
        let norm: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
        worst = worst.max((diff / norm.max(1e-30)).sqrt());
    }
    if let Some(extra) = adapter.0.keys().find(|k| !reference.0.contains_key(*k)) {
        bail!("the adapter has a tensor {extra} the reference lacks");
    }
    Ok(worst)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensors(items: &[(&str, &[f32])]) -> AdapterTensors {
        AdapterTensors(
            items
                .iter()
                .map(|(name, values)| (name.to_string(), values.to_vec()))
                .collect(),
        )
    }

    #[test]
    fn identical_adapters_deviate_by_zero_and_others_by_the_worst_tensor() {
        let b = tensors(&[("x", &[3.0, 4.0]), ("y", &[1.0, 0.0])]);
        assert_eq!(deviation(&b, &b).unwrap(), 0.0);
        let a = tensors(&[("x", &[3.0, 4.5]), ("y", &[1.0, 0.0])]);
        assert!((deviation(&a, &b).unwrap() - 0.1).abs() < 1e-12);
        let a = tensors(&[("x", &[3.0, 4.0]), ("y", &[1.0, 1.0])]);
        assert!((deviation(&a, &b).unwrap() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn different_tensor_sets_are_an_error() {
        let b = tensors(&[("x", &[1.0])]);
        assert!(deviation(&tensors(&[("z", &[1.0])]), &b).is_err());
        assert!(deviation(&tensors(&[("x", &[1.0, 2.0])]), &b).is_err());
        let more = tensors(&[("x", &[1.0]), ("z", &[1.0])]);
        assert!(deviation(&more, &b).is_err());
    }
}
