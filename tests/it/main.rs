//! The integration tests, one binary: a module per area, and `support`, the harness they share
//! (a gateway on free ports in front of the recording Kizen stand-in, token minting, Redis
//! servers, a store that fails on demand, assertion helpers).
//!
//! Run one area with a filter on its module, e.g. `cargo test --test it store_contract::`.

mod support;

mod admin;
mod architecture;
mod auth;
mod binary;
mod config;
mod confirm;
mod cors;
mod failover;
mod fuzz_corpus;
mod http_strictness;
mod jwks;
mod logs;
mod monitoring;
mod openapi;
mod presign;
mod replicas;
mod rotation;
mod secrets;
mod standin_storage;
mod store_contract;
mod upstream_faults;
