//! Policy decisions: pure functions of configuration and facts, no I/O.
//!
//! The service layer asks; this layer answers and says why (which rule decided),
//! so that every refusal a client sees can name its reason.

pub mod immutability;
pub mod retention;

pub use immutability::{equivalent_indexes, Decision, Mutability, RuleSet, RuleSpec};
pub mod access;
