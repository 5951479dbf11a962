//! Tollgate's tools as a library: the load generator ([`load`]) that `tollgate-load`, the demo and
//! the tests drive. The `tollgate` operator binary lives in `src/bin/tollgate.rs`.

pub mod load;
