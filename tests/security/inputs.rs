//! Hostile inputs: absurd numbers in specs and model configs, closed pipes.
