//! lorafleet's training engine: everything between a model file, JSONL
//! datasets and a trained LoRA adapter, on one rank or many.
//!
//! - [`model`]: the Llama decoder in HF layout and its loaders (HF folders,
//!   GGUF files, random presets).
//! - [`tokenizer`]: text to token ids, special tokens, chat templates.
//! - [`lora`]: adapters, attaching them to a model, merging, PEFT folders.
//! - [`data`]: datasets read, tokenized with loss masks, and sampled into
//!   each rank's batches of each step.
//! - [`train`]: gradients (the fused CPU step and the autodiff graph),
//!   AdamW, schedules, the training loop and its state.
//! - [`collective`]: all-reduce and friends across ranks ([`collective::Solo`],
//!   the TCP/shared-memory ring, NCCL).
//! - [`checkpoint`]: committing, verifying and restoring training state in
//!   object storage; [`storage`]: local paths and object store URLs.
//! - [`generate`]: text generation with a KV cache; [`bench`]: the
//!   workloads `lorafleet bench` measures.
//! - [`device`]: the compute backend, frozen-weight precision, CPU threads.
//! - [`suggest`]: "did you mean ...?" for misspelt words.
//!
//! **Architecture invariant:** this crate knows nothing of job specs, gRPC
//! or the coordinator, and model code never names a backend: the
//! [`Device`](burn::tensor::Device) passed in picks it ([`device`] makes
//! the default one).

pub mod bench;
pub mod checkpoint;
pub mod collective;
pub mod data;
pub mod device;
pub mod generate;
pub mod lora;
pub mod model;
pub mod storage;
pub mod suggest;
pub mod tokenizer;
pub mod train;
