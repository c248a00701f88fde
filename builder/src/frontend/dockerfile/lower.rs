//! Lowering of typed stages to the build graph (to be written).
