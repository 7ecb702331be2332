//! Integration tests against real `mpreg-daemon` processes and in-process
//! nodes: durability across kill -9, replay, refused data dirs, SQL.

mod bad_data_dir;
mod cli;
mod durability;
mod migrations;
mod pubsub;
mod rpc;
mod sql;
