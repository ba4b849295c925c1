//! Placement (to be written).
