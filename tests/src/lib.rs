//! Cross-layer integration tests for floodwall; the tests live in `tests/`.
