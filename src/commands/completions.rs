//! `lorafleet completions SHELL`: the shell completion script for the
//! whole command line (commands, flags, values), made by clap_complete
//! from the grammar in `cli`.
//!
//! Not here: the grammar itself (`cli`).

use std::io::Write as _;

use clap::CommandFactory;

use crate::cli::{Cli, CompletionsArgs};

pub fn run(args: CompletionsArgs) -> anyhow::Result<()> {
    let mut command = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, "lorafleet", &mut script);
    std::io::stdout().write_all(&script)?;
    Ok(())
}
