//! Tags: the only names the farm writes, and never backwards. This folder owns the rule (pure),
//! the writes of an index under a build's tags, and the locks that order them; what was written
//! is recorded by [`super::store`] (its `tags` table).
//!
//! # Layout
//! - [`rule`]: whether a build may move a tag, from the record and what the registry serves.
//! - [`writes`]: writing a build's index under its tags, one at a time, each recorded.
//! - [`locks`]: a lock per tag, held while a build decides and writes it.

pub mod locks;
pub mod rule;
pub mod writes;
