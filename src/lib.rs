//! The kconc workspace root: it exists to hold the examples and the test suite.
//! The library is `kconc-runtime`.
