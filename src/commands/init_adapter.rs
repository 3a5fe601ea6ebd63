//! `lora.init_adapter`: starting a run from an existing PEFT adapter, in a
//! local folder or in object storage (any URL `trainer::storage` opens).

use anyhow::Context;
use job::spec::PathOrUrl;
use object_store::ObjectStoreExt;
use trainer::checkpoint::block_on;
use trainer::lora::{LoraWeights, peft};
use trainer::model::LlamaConfig;
use trainer::storage::Location;

/// The files of a PEFT adapter folder that a run starts from.
const ADAPTER_FILES: [&str; 2] = ["adapter_config.json", "adapter_model.safetensors"];

/// Loads the adapter `init` names for a model of `model`'s shape.
pub fn load(init: &PathOrUrl, model: &LlamaConfig) -> anyhow::Result<LoraWeights> {
    let context = || format!("cannot load lora.init_adapter {init}");
    match init {
        PathOrUrl::Path(path) => peft::load(path, model).with_context(context),
        PathOrUrl::Url(url) => {
            let folder = Location::parse(url).with_context(context)?;
            let staging = tempfile::tempdir().context("cannot create a temporary folder")?;
            block_on(async {
                for name in ADAPTER_FILES {
                    let at = folder.join(name);
                    let bytes = at
                        .store()
                        .get(at.path())
                        .await
                        .with_context(|| format!("{}: cannot read", at.name()))?
                        .bytes()
                        .await
                        .with_context(|| format!("{}: cannot read", at.name()))?;
                    std::fs::write(staging.path().join(name), &bytes)
                        .with_context(|| format!("cannot write {name} to a temporary folder"))?;
                }
                anyhow::Ok(())
            })
            .with_context(context)?;
            peft::load(staging.path(), model).with_context(context)
        }
    }
}
