//! The procmesh client (being built: see issue 4).
