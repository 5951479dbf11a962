//! placeholder

pub mod bench_verify;
