//! Plan rendering (to be written).
