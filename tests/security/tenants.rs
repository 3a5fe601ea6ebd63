//! One tenant against another under `serve --config`: storage prefixes
//! escaped with encoded `..` and symlinks, uploads named by hash, drains.
