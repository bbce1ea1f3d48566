//! duet-client
