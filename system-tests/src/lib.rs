//! End-to-end tests of the api and the worker together: see `tests/it`. This crate has no code
//! of its own; it exists so that neither service depends on the other, even in its tests.
