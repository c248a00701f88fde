//! BuildKit's AST dump format (to be written).
