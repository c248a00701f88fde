//! `.dockerignore` matching with Docker's semantics (to be written).
