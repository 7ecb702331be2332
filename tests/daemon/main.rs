//! Integration tests against real `mpreg-daemon` processes and in-process
//! nodes: durability across kill -9, replay, refused data dirs, SQL,
//! metrics and logs.

mod bad_data_dir;
mod bench_peers;
mod cache;
mod cli;
mod clock_jumps;
mod cluster;
mod disk_faults;
mod documented;
mod durability;
mod federation;
mod framed;
mod hostile;
mod linearizable;
mod metrics;
mod migrations;
mod peers;
mod pg;
mod pubsub;
mod queue_crash;
mod queues;
mod readme;
mod rpc;
mod security;
mod sizes;
mod sql;
