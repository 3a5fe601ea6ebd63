//! `lora.init_adapter`: starting a run from an existing PEFT adapter, in a
//! local folder or in object storage (any URL `trainer::storage` opens).

use object_store::ObjectStoreExt;
use trainer::checkpoint::block_on;
use trainer::lora::{LoraWeights, peft};
use trainer::model::LlamaConfig;
use trainer::storage::Location;

use super::RecipeError;
use crate::spec::PathOrUrl;

/// The files of a PEFT adapter folder that a run starts from.
const ADAPTER_FILES: [&str; 2] = ["adapter_config.json", "adapter_model.safetensors"];

/// Loads the adapter `init` names for a model of `model`'s shape.
pub fn load(init: &PathOrUrl, model: &LlamaConfig) -> Result<LoraWeights, RecipeError> {
    let context = |e| RecipeError::Load {
        what: format!("cannot load lora.init_adapter {init}"),
        source: e,
    };
    match init {
        PathOrUrl::Path(path) => peft::load(path, model).map_err(|e| context(e.into())),
        PathOrUrl::Url(url) => {
            let folder = Location::parse(url).map_err(|e| context(e.into()))?;
            let staging = tempfile::tempdir()
                .map_err(|e| RecipeError::context("cannot create a temporary folder", e))?;
            block_on(async {
                for name in ADAPTER_FILES {
                    let at = folder.join(name);
                    let read = |e: object_store::Error| {
                        RecipeError::context(format!("{}: cannot read", at.name()), e)
                    };
                    let bytes = at
                        .store()
                        .get(at.path())
                        .await
                        .map_err(read)?
                        .bytes()
                        .await
                        .map_err(read)?;
                    std::fs::write(staging.path().join(name), &bytes).map_err(|e| {
                        RecipeError::context(
                            format!("cannot write {name} to a temporary folder"),
                            e,
                        )
                    })?;
                }
                Ok::<(), RecipeError>(())
            })
            .map_err(|e| context(e.into()))?;
            peft::load(staging.path(), model).map_err(|e| context(e.into()))
        }
    }
}
