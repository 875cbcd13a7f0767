//! One integration-test binary: the real server on 127.0.0.1:0, over SQLite and
//! over PostgreSQL, driven with raw HTTP and with real clients.

mod audit;
mod auth;
mod blobs;
mod browser;
mod container;
mod crash;
mod e2e;
mod faults;
mod helpers;
mod immutability;
mod jobs;
mod limits;
mod listing;
mod manifests;
mod metadata;
mod metrics;
mod process;
mod protocol;
mod provenance;
mod proxy;
mod replicas;
mod retention;
mod s3;
mod store_faults;
mod ui;
mod upgrade;
mod uploads;
