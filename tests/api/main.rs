//! One integration-test binary: the real server on 127.0.0.1:0, over SQLite and
//! over PostgreSQL, driven with raw HTTP and with real clients.

mod helpers;
mod process;
mod blobs;
mod uploads;
mod e2e;
mod manifests;
mod listing;
mod protocol;
mod immutability;
mod metadata;
