//! Hostile workers holding the cluster token: registering under another
//! worker's id, forging its events and heartbeats.
