//! The content-addressed build graph (to be written).
