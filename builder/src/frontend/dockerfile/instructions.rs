//! Typed, validated instructions and stages (to be written).
