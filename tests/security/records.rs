//! Oversized dataset records: one long JSONL line must give a clear
//! `FILE:LINE` error and keep memory within the documented bound.
