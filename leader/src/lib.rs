//! duet-leader
