//! One integration-test binary: the real server on 127.0.0.1:0, over SQLite and
//! over PostgreSQL, driven with raw HTTP and with real clients.

mod audit;
mod blobs;
mod crash;
mod browser;
mod e2e;
mod faults;
mod helpers;
mod immutability;
mod limits;
mod listing;
mod manifests;
mod metadata;
mod metrics;
mod process;
mod protocol;
mod provenance;
mod retention;
mod upgrade;
mod ui;
mod uploads;
