//! Integration tests: the real gateway and message-service over real NATS and PostgreSQL
//! (throwaway servers on random ports), and the single-node program with neither.

// Tests state their expectations with unwrap/expect; a failure is the test failing.
#![allow(clippy::unwrap_used)]

mod attachments;
mod attacks;
mod bad_input;
mod conformance;
mod connection_limits;
mod conversations;
mod delivery;
mod fresh_sockets;
mod gateway_limits;
mod gateway_operations;
mod group_roles;
mod grpc;
mod http_api;
mod nats_auth;
mod overload;
mod presence;
mod push;
mod push_abuse;
mod push_fakes;
mod rest;
mod rich_messages;
mod send_batches;
mod single_node_settings;
mod spec_client;
mod store_suite;
mod support;
mod traces;
