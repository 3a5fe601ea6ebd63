//! Output folders that already hold a user's files: `download -o` and a
//! spec's `output.dir` never delete what lorafleet did not write.
