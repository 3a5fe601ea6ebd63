//! "Did you mean ...?" for misspelt keys and values: the trainer's helper,
//! which also serves dataset records.

pub(super) use trainer::suggest::closest;
