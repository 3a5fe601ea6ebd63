//! lorafleet's training engine.
//!
//! Today it holds the Llama model and its loaders ([`model`]), tokenization
//! and chat templates ([`tokenizer`]), text generation ([`generate`]) and the
//! forward-pass benchmark ([`bench`]). **Architecture invariant:** this crate
//! knows nothing of jobs, gRPC or the coordinator, and model code never names
//! a backend: the [`Device`](burn::tensor::Device) passed in picks it
//! ([`device`] makes the default one).

pub mod bench;
pub mod checkpoint;
pub mod collective;
pub mod data;
pub mod device;
pub mod generate;
pub mod lora;
pub mod model;
pub mod storage;
pub mod tokenizer;
pub mod train;
