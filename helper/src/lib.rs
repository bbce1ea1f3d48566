//! duet-helper
