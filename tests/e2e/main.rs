//! End-to-end tests: the `cortex` binary and its components against
//! throwaway coordination roots. One test binary; a module per capability.

mod archive;
mod backends;
mod cli;
mod cloudevents;
mod crash;
mod dashboard;
mod dispatch;
mod handlers;
mod host_boundary;
mod ingest;
mod languages;
mod payloads;
mod redis_hosts;
mod redis_kv;
mod redis_lease;
mod redis_settle;
mod redis_store;
mod reliability;
mod replay;
mod sandbox;
mod schedule;
mod schema;
mod service;
mod state;
mod store;
mod trace;
mod trust;
mod user;
mod webhooks;
mod world;
